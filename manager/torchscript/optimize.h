// What `models[].optimize` does to a module at load. A header of the adapter that
// includes libtorch: only the adapter and bench/inprocess (which must time exactly
// what the daemon runs) include it.
#pragma once

#include <torch/script.h>

namespace splitlearnd {

// Freezes `module` (parameters and attributes become constants; methods other than
// forward are dropped) and runs TorchScript's inference passes on it: constant
// folding, linear weights stored pre-transposed, conv/batch-norm folding. The result
// computes the same function up to floating-point rounding. `module` must be in eval
// mode.
inline torch::jit::Module OptimizeForInference(const torch::jit::Module& module) {
  torch::jit::Module frozen = torch::jit::freeze(module);
  return torch::jit::optimize_for_inference(frozen);
}

}  // namespace splitlearnd
