// What an AOTInductor package's inputs must look like, and the check of a request
// against it. libtorch-free, so that both libtorch builds test it.
//
// A compiled package does not check its inputs: a tensor of another shape or dtype
// than it was exported for is read out of bounds. splitlearnd therefore serves a
// package only when it describes its inputs, in the package metadata key
// `splitlearnd.inputs` (written by examples/python/export_trunk.py; docs/models.md):
//
//     name:dtype:dim x dim x ...;name:dtype:...
//
// where a dim is a size (`768`) or a dynamic dimension `SYMBOL=MIN..MAX` (`B=1..64`).
// Dimensions that share a symbol must be equal in every request; the batch dimension
// is the first one. Example: `hidden_states:float32:B=1..64xT=1..512x768`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"

namespace splitlearnd {

struct AotiDim {
  int64_t size = -1;   // fixed size, or -1 when dynamic
  std::string symbol;  // dynamic: its name, shared by equal dimensions
  int64_t min = 0, max = 0;
};

struct AotiInput {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<AotiDim> dims;
};

// Parses the `splitlearnd.inputs` text; errors name the offending part.
StatusOr<std::vector<AotiInput>> ParseAotiInputs(const std::string& text);

// The inputs of a request, in the package's order: dtype and shape.
struct AotiArg {
  DType dtype;
  std::vector<int64_t> shape;
};

// INVALID_ARGUMENT naming the first input whose count, dtype, rank, size, range or
// shared dimension does not fit `spec`; OK otherwise.
Status CheckAotiArgs(const std::vector<AotiInput>& spec, const std::vector<AotiArg>& args);

// The most rows a merged batch may have: every input's first dimension must be one
// dynamic symbol, and the answer is its MAX; 0 when requests can never be merged.
int64_t AotiMaxBatchRows(const std::vector<AotiInput>& spec);

// `text` as a spec again (for logs and status).
std::string FormatAotiInputs(const std::vector<AotiInput>& spec);

}  // namespace splitlearnd
