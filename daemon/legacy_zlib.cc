// See legacy_zlib.h.
#include "daemon/legacy_zlib.h"

#include <zlib.h>

#include <algorithm>

namespace splitlearnd {

bool LooksLikeZlib(const std::string& bytes) {
  if (bytes.size() < 6) return false;  // header, at least an empty block, check value
  const auto cmf = static_cast<unsigned char>(bytes[0]);
  const auto flg = static_cast<unsigned char>(bytes[1]);
  const bool deflate = (cmf & 0x0f) == 8 && (cmf >> 4) <= 7;
  const bool no_dictionary = (flg & 0x20) == 0;
  return deflate && no_dictionary && (cmf * 256 + flg) % 31 == 0;
}

Status InflateExactly(const std::string& in, size_t expected, const std::string& what,
                      std::shared_ptr<std::string>* out) {
  z_stream z{};
  if (inflateInit(&z) != Z_OK) return Internal("zlib: cannot start inflating");
  auto buffer = std::make_shared<std::string>();
  // Grown as the stream yields bytes, so that a short stream claiming a large shape
  // costs no more memory than it really inflates to.
  buffer->resize(std::min<size_t>(expected, size_t{1} << 20));
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  size_t fed = 0;
  int rc;
  size_t produced = 0;
  while (true) {
    if (z.avail_in == 0 && fed < in.size()) {
      const size_t chunk = std::min<size_t>(in.size() - fed, 1u << 30);
      z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + fed));
      z.avail_in = static_cast<uInt>(chunk);
      fed += chunk;
    }
    if (produced == buffer->size()) {
      if (buffer->size() == expected) {
        // Full: one more byte means the stream is longer than the shape needs.
        unsigned char probe;
        z.next_out = &probe;
        z.avail_out = 1;
        rc = inflate(&z, Z_NO_FLUSH);
        const bool more = z.avail_out == 0;
        inflateEnd(&z);
        if (rc == Z_STREAM_END && !more) break;
        if (more) {
          return InvalidArgument(what + ": zlib data inflates past the " + std::to_string(expected) +
                                 " bytes its shape and dtype need");
        }
        return InvalidArgument(what + ": zlib data does not end where its shape and dtype say it should");
      }
      buffer->resize(std::min(expected, buffer->size() * 2));
    }
    z.next_out = reinterpret_cast<Bytef*>(buffer->data() + produced);
    const size_t room = std::min<size_t>(buffer->size() - produced, 1u << 30);
    z.avail_out = static_cast<uInt>(room);
    rc = inflate(&z, Z_NO_FLUSH);
    produced += room - z.avail_out;
    if (rc == Z_STREAM_END) {
      inflateEnd(&z);
      break;
    }
    if (rc != Z_OK && !(rc == Z_BUF_ERROR && z.avail_out == 0)) {
      const std::string why = z.msg ? z.msg : "truncated";  // read before inflateEnd
      inflateEnd(&z);
      return InvalidArgument(what + ": data is neither " + std::to_string(expected) +
                             " plain bytes nor a whole zlib stream of them (" + why + ")");
    }
  }
  if (produced != expected) {
    return InvalidArgument(what + ": zlib data inflates to " + std::to_string(produced) + " bytes, its shape and dtype need " +
                           std::to_string(expected));
  }
  if (z.total_in != in.size()) return InvalidArgument(what + ": bytes follow the end of the zlib stream");
  *out = std::move(buffer);
  return Status::Ok();
}

void DeflateInto(const void* data, size_t n, std::string* out) {
  // The fastest level: answers are mostly activations, which compress little anyway,
  // and the client pays only for what crosses the wire.
  uLongf size = compressBound(static_cast<uLong>(n));
  out->resize(size);
  compress2(reinterpret_cast<Bytef*>(out->data()), &size, static_cast<const Bytef*>(data), static_cast<uLong>(n),
            Z_BEST_SPEED);
  out->resize(size);
}

}  // namespace splitlearnd
