// Host-side tensors as the request path sees them: raw bytes, a dtype and a shape.
//
// No libtorch here. A HostTensor does not own its bytes; `owner` keeps whatever holds
// them alive (the request message on the way in, the output tensor on the way out), so
// neither direction needs a copy of its own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/dtype.h"

namespace splitlearnd {

struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;

  int64_t NumElements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

struct NamedTensor {
  std::string name;  // empty: the model's first positional argument (or its single output)
  HostTensor tensor;
};

// One transformer layer's cache: key and value, each [batch, heads, seq, head_dim].
struct KVPair {
  HostTensor key;
  HostTensor value;
};

// Checked element count of `shape` (1 for a scalar, 0 with a dimension of 0): false on
// a negative dimension or a count past `max_elements`.
inline bool CheckedNumElements(const std::vector<int64_t>& shape, int64_t max_elements, int64_t* out) {
  bool empty = false;  // a dimension of 0: no elements, whatever the others say
  for (int64_t d : shape) {
    if (d < 0) return false;
    empty = empty || d == 0;
  }
  int64_t n = empty ? 0 : 1;  // a scalar (no dimensions) has one element
  for (int64_t d : shape) {
    if (empty) break;
    if (n > max_elements / d) return false;
    n *= d;
  }
  *out = n;
  return n <= max_elements;
}

}  // namespace splitlearnd
