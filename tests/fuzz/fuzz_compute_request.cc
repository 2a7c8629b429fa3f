// libFuzzer target: arbitrary bytes as a ComputeRequest or BackwardRequest, through the
// same validation the daemon runs before a request may reach a device queue.
//
// The first byte picks the message type; the rest is the serialized message. Beyond
// "no crash", every request that decodes is checked for the promises the codec makes:
// each tensor's bytes match its shape and dtype, lie inside the request (or, inflated
// from a zlib stream, in memory the tensor owns), and stay within the limits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <google/protobuf/stubs/logging.h>

#include "compute.pb.h"
#include "daemon/codec.h"

namespace {

using splitlearnd::HostTensor;
using splitlearnd::Limits;

Limits SmallLimits() {
  Limits l;
  l.max_rank = 8;
  l.max_elements = 4096;
  l.max_id_bytes = 256;
  l.max_inputs = 8;
  l.max_kv_entries = 16;
  l.max_metadata_entries = 8;
  l.max_metadata_bytes = 1024;
  return l;
}

[[noreturn]] void Broken(const char* what) {
  std::fprintf(stderr, "codec invariant broken: %s\n", what);
  std::abort();
}

// The tensor must describe exactly the bytes it points at, inside [lo, hi).
void CheckTensor(const HostTensor& t, const Limits& limits) {
  if (static_cast<int>(t.shape.size()) > limits.max_rank) Broken("rank");
  // A scalar (rank 0) has one element; a dimension of 0 makes none, whatever the others.
  bool empty = false;
  for (int64_t d : t.shape) {
    if (d < 0) Broken("negative dimension");
    empty = empty || d == 0;
  }
  int64_t n = empty ? 0 : 1;
  for (int64_t d : t.shape) {
    if (empty) break;
    n *= d;
    if (n > limits.max_elements) Broken("element count over the limit");
  }
  if (static_cast<size_t>(n) * splitlearnd::DTypeSize(t.dtype) != t.nbytes) Broken("byte count");
  // Read every byte: ASan reports it if the pointer does not own them.
  const auto* p = static_cast<const unsigned char*>(t.data);
  unsigned sum = 0;
  for (size_t i = 0; i < t.nbytes; ++i) sum += p[i];
  if (sum == 0xFFFFFFFFu) std::puts("");
}

}  // namespace

// Invalid UTF-8 in string fields makes protobuf log each time; that is noise here.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const Limits limits = SmallLimits();
  const bool backward = data[0] & 1;
  const uint8_t* body = data + 1;
  const int body_size = static_cast<int>(size - 1);
  if (!backward) {
    splitlearn::comm::ComputeRequest req;
    if (!req.ParseFromArray(body, body_size)) return 0;
    auto decoded = splitlearnd::DecodeCompute(req, limits);
    if (!decoded.ok()) {
      if (decoded.status().message().empty()) Broken("refusal without a message");
      return 0;
    }
    const auto& r = decoded->request;
    if (r.inputs.empty()) Broken("no inputs");
    if (static_cast<int>(r.inputs.size()) > limits.max_inputs + 1) Broken("too many inputs");
    for (const auto& in : r.inputs) {
      if (in.name.size() > limits.max_id_bytes) Broken("input name length");
      CheckTensor(in.tensor, limits);
    }
    for (const auto& kv : r.past_key_values) {
      if (kv.key.shape.size() != 4 || kv.value.shape.size() != 4) Broken("kv rank");
      for (int d = 0; d < 3; ++d) {
        if (kv.key.shape[d] != kv.value.shape[d]) Broken("key and value disagree");
      }
      if (kv.key.shape != r.past_key_values.front().key.shape) Broken("kv shapes disagree");
      CheckTensor(kv.key, limits);
      CheckTensor(kv.value, limits);
    }
    if (decoded->rows < 0) Broken("rows");
    if (decoded->batch_key != 0 && decoded->rows < 1) Broken("an empty or scalar request may merge");
    if (r.session_id.size() > limits.max_id_bytes) Broken("session id length");
  } else {
    splitlearn::comm::BackwardRequest req;
    if (!req.ParseFromArray(body, body_size)) return 0;
    auto decoded = splitlearnd::DecodeBackward(req, limits);
    if (!decoded.ok()) {
      if (decoded.status().message().empty()) Broken("refusal without a message");
      return 0;
    }
    const auto& b = decoded->request;
    if (b.forward_id.empty() || b.forward_id.size() > limits.max_id_bytes) Broken("forward id");
    CheckTensor(b.grad_output, limits);
  }
  return 0;
}
