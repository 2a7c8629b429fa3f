// 8-bit blockwise quantisation of float32 tensors, the compressed wire encoding for
// activations (docs/protocol.md, "int8 blockwise").
//
// The values are cut into blocks of `block_size` consecutive elements (the last block
// may be shorter). Each block sends one float32 scale and one int8 code per value:
//
//   absmax = max |x| over the block
//   scale  = absmax / 127, rounded UP to the next float32 (so absmax / scale <= 127)
//   code   = round(x / scale), in [-127, 127]        (an all-zero block has scale 0)
//   decoded value = code * scale, computed exactly and rounded once to float32
//
// Error bound, per value: |decoded - x| <= scale / 2 (half a quantisation step of its
// block, about absmax / 254), plus the one float32 rounding of the decoded value
// (at most 2^-24 * |decoded|). Every float32 block is representable: scales are
// computed in double, so blocks near FLT_MAX do not overflow (a decoded value is
// saturated at +-FLT_MAX), and subnormal blocks keep the bound because the scale is
// rounded up, never down to 0.
//
// Non-finite input (NaN, +-inf) has no scale: Encode refuses it with INVALID_ARGUMENT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace splitlearnd {

struct BlockwiseInt8 {
  std::vector<int8_t> codes;  // one per value
  std::vector<float> scales;  // one per block: ceil(count / block_size)
};

// Number of blocks for `count` values (block_size > 0).
size_t BlockwiseInt8Blocks(size_t count, size_t block_size);

// Quantises `count` floats. Refuses block_size 0 and non-finite values.
StatusOr<BlockwiseInt8> EncodeBlockwiseInt8(const float* values, size_t count, size_t block_size);

// Decodes `count` values into `out` (resized). `codes` holds the int8 codes as bytes.
// Refuses, with INVALID_ARGUMENT: block_size 0, a byte count other than `count`, a
// scale count other than ceil(count / block_size), and scales that are negative,
// NaN or infinite. `what` names the tensor in error messages.
Status DecodeBlockwiseInt8(const std::string& codes, const float* scales, size_t scale_count, size_t block_size,
                           size_t count, const std::string& what, std::vector<float>* out);

}  // namespace splitlearnd
