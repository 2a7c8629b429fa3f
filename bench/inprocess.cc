// inprocess: the compute limit. Loads a TorchScript .pt (or, on libtorch 2.6 and
// later, an AOTInductor .pt2 package) with libtorch and times its forward directly, at batch 1 and at larger batches, with the same thread settings
// the daemon applies (splitlearnd's own ConfigureTorchThreads). No gRPC here: this
// translation unit includes libtorch headers and must not include protobuf ones.
#include <torch/script.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/shape.h"
#include "manager/torchscript/optimize.h"
#include "manager/torchscript/torch_compat.h"
#include "manager/torchscript/torchscript.h"

#if SPLITLEARND_HAVE_AOTI
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#endif

#include <functional>
#include <memory>

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5)];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, shape_text = "1x10x768", csv, label;
  std::vector<int> batches{1, 8};
  double duration_s = 3;
  int warmup = 5;
  int64_t gap_us = 0;
  bool optimize = false;
  bool prepack = false;
  splitlearnd::ThreadSettings threads;
  threads.intra_op_threads = 1;
  threads.blas_threads = 0;

  CLI::App app{"inprocess: time a TorchScript shard's forward() in-process (the limit for any server)"};
  app.add_option("--model", model_path, "the .pt file, or a .pt2 AOTInductor package")->required();
  app.add_option("--shape", shape_text, "shape of ONE request; batch N multiplies its first dimension")
      ->capture_default_str();
  app.add_option("--batch", batches, "batch sizes to time (requests per forward)")->capture_default_str();
  app.add_option("--duration-s", duration_s, "timed seconds per batch size")->capture_default_str()->check(CLI::Range(0.05, 600.0));
  app.add_option("--warmup", warmup, "untimed forwards first")->capture_default_str()->check(CLI::Range(0, 10000));
  app.add_option("--intra-op-threads", threads.intra_op_threads, "libtorch intra-op threads (as the daemon's config)")
      ->capture_default_str();
  app.add_option("--blas-threads", threads.blas_threads, "OpenBLAS threads (0: one per core, as the daemon)")
      ->capture_default_str();
  app.add_option("--gap-us", gap_us,
                 "diagnostic: sleep this long before each timed forward, as a server idles between calls (forwards/s then counts the sleeps)")
      ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  app.add_flag("--optimize", optimize, "freeze and optimize the module first, as the daemon does for models[].optimize");
  app.add_flag("--prepack-linear", prepack, "with --optimize: pack Linear weights at load, as models[].prepack_linear");
  app.add_option("--csv", csv, "append one row per batch size to this CSV file");
  app.add_option("--label", label, "free text for the CSV rows");
  CLI11_PARSE(app, argc, argv);

  auto parsed = splitlearnd::ParseShape(shape_text);
  if (!parsed.ok()) {
    std::fprintf(stderr, "inprocess: --shape: %s\n", parsed.status().message().c_str());
    return 2;
  }
  const std::vector<int64_t> shape = std::move(*parsed);
  splitlearnd::ConfigureTorchThreads(threads);
  splitlearnd::DisableTorchScriptFuser();  // as the daemon runs its models
  const auto eff = splitlearnd::EffectiveTorchThreads();

  // One forward of a batch, as the daemon's model runs it.
  std::function<void(const at::Tensor&)> forward;
  torch::jit::Module module;
  const bool package = model_path.size() > 4 && model_path.compare(model_path.size() - 4, 4, ".pt2") == 0;
  try {
    if (package) {
#if SPLITLEARND_HAVE_AOTI
      auto loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(model_path);
      forward = [loader](const at::Tensor& x) { loader->run({x}); };
#else
      std::fprintf(stderr, "inprocess: %s is an AOTInductor package: it needs libtorch 2.6 or later\n",
                   model_path.c_str());
      return 1;
#endif
    } else {
      module = torch::jit::load(model_path);
      module.eval();
      if (optimize) module = splitlearnd::OptimizeForInference(module, prepack);
      forward = [&module](const at::Tensor& x) { module.forward({x}).toTensor(); };
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "inprocess: cannot load %s: %s\n", model_path.c_str(), e.what_without_backtrace());
    return 1;
  }
  std::printf("inprocess: %s%s, shape %s, threads intra-op %d, BLAS %d\n  %s\n", model_path.c_str(),
              package ? " (AOTInductor package)" : optimize ? (prepack ? " (optimized, Linear weights prepacked)" : " (optimized)") : "",
              shape_text.c_str(), eff.intra_op_threads, eff.blas_threads,
              splitlearnd::TorchBuildSummary().c_str());

  bool fresh = true;
  if (!csv.empty()) {
    std::ifstream probe(csv);
    fresh = !probe.good() || probe.peek() == std::ifstream::traits_type::eof();
  }
  std::ofstream out;
  if (!csv.empty()) {
    out.open(csv, std::ios::app);
    if (!out) {
      std::fprintf(stderr, "inprocess: cannot write %s\n", csv.c_str());
      return 1;
    }
    if (fresh) out << "label,model,shape,batch,intra,blas,forwards,p50_us,p90_us,mean_us,forwards_per_s,requests_per_s\n";
  }

  c10::InferenceMode guard;
  for (int batch : batches) {
    if (batch < 1) continue;
    std::vector<int64_t> s = shape;
    s[0] *= batch;
    at::Tensor input = torch::randn(s);
    try {
      for (int i = 0; i < warmup; ++i) forward(input);
      std::vector<double> us;
      const auto start = Clock::now();
      const auto until = start + std::chrono::microseconds(static_cast<int64_t>(duration_s * 1e6));
      auto now = start;
      // At least 5 forwards even when one takes longer than the duration; bounded by
      // 5 forwards or the duration, whichever is later.
      while (now < until || us.size() < 5) {
        if (gap_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
        const auto t0 = Clock::now();
        forward(input);
        now = Clock::now();
        us.push_back(std::chrono::duration<double, std::micro>(now - t0).count());
      }
      const double total_s = std::chrono::duration<double>(now - start).count();
      std::sort(us.begin(), us.end());
      double mean = 0;
      for (double v : us) mean += v;
      mean /= static_cast<double>(us.size());
      const double fps = static_cast<double>(us.size()) / total_s;
      std::printf("  batch %3d: %6zu forwards  p50 %9.0f us  p90 %9.0f us  mean %9.0f us  %8.1f forwards/s  %9.1f requests/s\n",
                  batch, us.size(), Percentile(us, 50), Percentile(us, 90), mean, fps, fps * batch);
      if (out) {
        char row[512];
        std::snprintf(row, sizeof row, "%s,%s,%s,%d,%d,%d,%zu,%.1f,%.1f,%.1f,%.2f,%.2f\n", label.c_str(),
                      model_path.substr(model_path.rfind('/') + 1).c_str(), shape_text.c_str(), batch,
                      eff.intra_op_threads, eff.blas_threads, us.size(), Percentile(us, 50), Percentile(us, 90), mean,
                      fps, fps * batch);
        out << row;
      }
    } catch (const c10::Error& e) {
      std::fprintf(stderr, "inprocess: forward at batch %d failed: %s\n", batch, e.what_without_backtrace());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "inprocess: forward at batch %d failed: %s\n", batch, e.what());
      return 1;
    }
  }
  return 0;
}
