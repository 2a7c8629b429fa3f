#include "common/blockwise_int8.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace splitlearnd {

size_t BlockwiseInt8Blocks(size_t count, size_t block_size) { return count / block_size + (count % block_size != 0); }

namespace {

// absmax / 127 as the smallest float32 that is >= the exact quotient.
float ScaleFor(float absmax) {
  if (absmax == 0.0f) return 0.0f;
  const double exact = static_cast<double>(absmax) / 127.0;
  float s = static_cast<float>(exact);
  if (static_cast<double>(s) < exact) s = std::nextafter(s, FLT_MAX);
  return s;
}

}  // namespace

StatusOr<BlockwiseInt8> EncodeBlockwiseInt8(const float* values, size_t count, size_t block_size) {
  if (block_size == 0) return InvalidArgument("int8 blockwise: block size must be at least 1");
  BlockwiseInt8 out;
  out.codes.resize(count);
  out.scales.resize(BlockwiseInt8Blocks(count, block_size));
  for (size_t b = 0; b < out.scales.size(); ++b) {
    const size_t begin = b * block_size;
    const size_t end = std::min(count, begin + block_size);
    float absmax = 0.0f;
    for (size_t i = begin; i < end; ++i) {
      if (!std::isfinite(values[i])) {
        return InvalidArgument("int8 blockwise: value " + std::to_string(i) + " is not finite");
      }
      absmax = std::max(absmax, std::fabs(values[i]));
    }
    const float scale = ScaleFor(absmax);
    out.scales[b] = scale;
    for (size_t i = begin; i < end; ++i) {
      if (scale == 0.0f) {
        out.codes[i] = 0;
        continue;
      }
      const double q = std::nearbyint(static_cast<double>(values[i]) / static_cast<double>(scale));
      out.codes[i] = static_cast<int8_t>(std::clamp(q, -127.0, 127.0));
    }
  }
  return out;
}

Status DecodeBlockwiseInt8(const std::string& codes, const float* scales, size_t scale_count, size_t block_size,
                           size_t count, const std::string& what, std::vector<float>* out) {
  if (block_size == 0) return InvalidArgument(what + ": int8 blockwise block size must be at least 1");
  if (codes.size() != count) {
    return InvalidArgument(what + ": " + std::to_string(codes.size()) + " bytes of int8 codes, the shape needs " +
                           std::to_string(count));
  }
  const size_t blocks = BlockwiseInt8Blocks(count, block_size);
  if (scale_count != blocks) {
    return InvalidArgument(what + ": " + std::to_string(scale_count) + " int8 blockwise scales, " +
                           std::to_string(count) + " values in blocks of " + std::to_string(block_size) + " need " +
                           std::to_string(blocks));
  }
  for (size_t b = 0; b < blocks; ++b) {
    if (!(scales[b] >= 0.0f) || !std::isfinite(scales[b])) {
      return InvalidArgument(what + ": int8 blockwise scale " + std::to_string(b) + " is negative or not finite");
    }
  }
  out->resize(count);
  for (size_t i = 0; i < count; ++i) {
    const int8_t c = static_cast<int8_t>(codes[i]);
    // Exact in double (8-bit code times 24-bit mantissa); saturate instead of overflowing.
    const double v = std::clamp(static_cast<double>(c) * static_cast<double>(scales[i / block_size]),
                                -static_cast<double>(FLT_MAX), static_cast<double>(FLT_MAX));
    (*out)[i] = static_cast<float>(v);
  }
  return Status::Ok();
}

}  // namespace splitlearnd
