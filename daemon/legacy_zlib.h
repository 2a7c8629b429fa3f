// The legacy client's compressed codec: a tensor's `data` is a zlib stream (RFC 1950)
// of its float32 bytes, the shape beside it plain. splitlearnd decodes such a tensor
// when its bytes do not match the shape but inflate to exactly what it needs, and
// compresses the answer the same way (docs/protocol.md).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"

namespace splitlearnd {

// Whether `bytes` starts with a zlib header (deflate, a window of at most 32 KiB, a
// valid check value, no preset dictionary).
bool LooksLikeZlib(const std::string& bytes);

// Inflates the zlib stream `in` into `*out`, which must come out at exactly `expected`
// bytes. The output grows with what the stream really yields and never past
// `expected`: a stream that inflates to more, or to less, or that is not one whole zlib
// stream is INVALID_ARGUMENT (`what` names the tensor), with no allocation beyond
// `expected` bytes.
Status InflateExactly(const std::string& in, size_t expected, const std::string& what,
                      std::shared_ptr<std::string>* out);

// `n` bytes at `data` as one zlib stream into `*out` (its previous contents replaced).
void DeflateInto(const void* data, size_t n, std::string* out);

}  // namespace splitlearnd
