// Demo and benchmark shards written through libtorch, so that nothing needs Python
// (`splitlearnd make-demo-shard`, the adapter's tests). libtorch-free header.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace splitlearnd {

struct ShardSpec {
  enum class Kind { kTransformer, kTiny, kIdentity } kind = Kind::kTransformer;
  int layers = 2;
  int hidden = 768;
  int heads = 12;
  int ffn = 3072;
  bool causal = false;
  uint64_t seed = 0;
};

// Writes a TorchScript module with random weights (seeded by spec.seed) to `path`,
// atomically: a reader sees the old file or the whole new one.
//   kTransformer: spec.layers pre-norm encoder layers (hidden, heads, ffn, causal)
//   kTiny:        Linear hidden->hidden + GELU
//   kIdentity:    returns its input
Status WriteShard(const std::string& path, const ShardSpec& spec);

}  // namespace splitlearnd
