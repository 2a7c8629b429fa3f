// The TorchScript adapter: loads .pt files (and .pt2 AOTInductor packages, see
// aoti_model.h) with libtorch and runs them as Models.
//
// This header is libtorch-free on purpose: only the adapter's own files include
// libtorch (it is slow to compile, and a CUDA libtorch carries protobuf headers that
// clash with the system's). bench/inprocess includes libtorch too, to time exactly what
// the daemon runs. Demo shards: demo_shard.h.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "manager/model.h"

namespace splitlearnd {

struct ThreadSettings {
  int intra_op_threads = 0;  // 0: 1 (OpenBLAS does the parallel work; see docs/threading.md)
  int inter_op_threads = 0;  // 0: 1
  int blas_threads = 0;      // 0: hardware threads
  // CPUs for OpenBLAS's helper threads (the cpu device's `cpus`); empty: not pinned.
  std::vector<int> blas_cpus;
};

// Applies thread settings once per process, before any model runs. Later calls are
// ignored (libtorch allows the inter-op pool to be sized only once).
void ConfigureTorchThreads(const ThreadSettings& settings);
// Effective settings after ConfigureTorchThreads, for status and logs.
ThreadSettings EffectiveTorchThreads();
// Short description of the libtorch build (version, BLAS, CUDA availability).
std::string TorchBuildSummary();

// TorchScript's tensor-expression fuser compiles fused kernels with LLVM while the first
// requests of a model wait (Debian's libtorch 2.6 does so on the CPU; a 12-step loop
// of small products took over a minute on the device worker). The daemon never compiles
// in the request path: MakeTorchScriptLoader turns the fuser off for the process, and
// bench/inprocess calls this to time what the daemon runs.
void DisableTorchScriptFuser();

// The loader of the adapter: TorchScript files, and AOTInductor packages (a path that
// ends in .pt2; aoti_model.h) where this libtorch can load them.
std::shared_ptr<ModelLoader> MakeTorchScriptLoader();

// FAILED_PRECONDITION naming the first model whose file format this build cannot load
// (an AOTInductor package on libtorch before 2.6), with what it needs; OK otherwise.
// --check-config and every reload ask it before anything loads.
Status CheckModelFormats(const Config& config);

}  // namespace splitlearnd
