// What `models[].optimize` does to a module at load. A header of the adapter that
// includes libtorch: only the adapter and bench/inprocess (which must time exactly
// what the daemon runs) include it.
#pragma once

#include <torch/script.h>

namespace splitlearnd {

// Freezes `module` (parameters and attributes become constants; methods other than
// forward are dropped) and runs TorchScript's inference passes on it: constant
// folding, conv/linear and batch-norm folding, conv+add+relu fusion, MKLDNN conversion
// (all of optimize_for_inference but its linear-weight transpose; Linear layers stay
// aten::linear). With `prepack_linear`, PrepackLinearWeights runs last, as
// models[].prepack_linear asks. The result computes the same function up to
// floating-point rounding. `module` must be in eval mode.
torch::jit::Module OptimizeForInference(const torch::jit::Module& module, bool prepack_linear);

// OpenBLAS's thread count as set now (openblas_get_num_threads), or 0 where OpenBLAS
// is not the BLAS. The device worker sets it per model (models[].blas_threads).
int OpenBlasThreads();

// True where PrepackLinearWeights can run (x86-64 with AVX2 and FMA).
bool PrepackLinearSupported();

// Replaces every aten::matmul(x, W) and aten::linear(x, W, b) in forward whose weight
// is a float32 CPU constant matrix (and whose bias, if any, is a constant) by
// splitlearnd::packed_linear(x, P, b, N): the weight packed once for packed_gemm's
// kernel, so the per-call copy that OpenBLAS makes of it is gone; a constant bias
// added to the product folds into the kernel. The kernel runs on as many threads as
// OpenBLAS is set to when it is called (the model's blas_threads), and wins at a few
// rows per call (models[].prepack_linear, docs/configuration.md). Does nothing where
// the CPU lacks AVX2/FMA. Returns the layers replaced.
int PrepackLinearWeights(torch::jit::Module& module);

}  // namespace splitlearnd
