// The adapter's entry points (torchscript.h): the loader, the format check, the fuser
// switch and the build summary.
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <torch/cuda.h>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>
#include <torch/version.h>

#include <sstream>

#include "common/digest.h"
#include "manager/torchscript/aoti_model.h"
#include "manager/torchscript/errors.h"
#include "manager/torchscript/optimize.h"
#include "manager/torchscript/threads.h"
#include "manager/torchscript/torchscript.h"
#include "manager/torchscript/torchscript_model.h"

namespace splitlearnd {
namespace {

// Bytes of a module's parameters and buffers.
int64_t ModuleBytes(const torch::jit::Module& module) {
  int64_t bytes = 0;
  for (const auto& p : module.parameters()) bytes += p.nbytes();
  for (const auto& b : module.buffers()) bytes += b.nbytes();
  return bytes;
}

StatusOr<c10::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(at::kCPU);
  const int index = std::stoi(name.substr(5));
  if (!torch::cuda::is_available()) {
    return FailedPrecondition("device " + name +
                              " is not available: this libtorch build has no CUDA support or no GPU is visible");
  }
  if (index >= static_cast<int>(torch::cuda::device_count())) {
    return FailedPrecondition("device " + name + " does not exist (" + std::to_string(torch::cuda::device_count()) +
                              " CUDA devices visible)");
  }
  return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// Loads, optimizes as the config asks, and wraps a TorchScript file.
StatusOr<std::shared_ptr<TorchScriptModel>> LoadTorchScriptModel(const ModelConfig& config, const std::string& file,
                                                                  c10::Device device) {
  torch::jit::Module module = torch::jit::load(file, device);
  module.eval();
  if (!module.find_method("forward")) return InvalidArgument(file + " has no forward() method");
  const int64_t parameter_bytes = ModuleBytes(module);
  if (config.optimize) module = OptimizeForInference(module, /*prepack_linear=*/false);
  if (config.prepack_linear) {
    if (!PrepackLinearSupported()) {
      spdlog::warn("model '{}': prepack_linear needs a CPU with AVX2 and FMA; this one runs BLAS as before", config.id);
    } else {
      spdlog::info("model '{}': {} linear layer(s) run on weights prepacked at load", config.id,
                   PrepackLinearWeights(module));
    }
  }
  return std::make_shared<TorchScriptModel>(config, std::move(module), device, parameter_bytes);
}

class TorchScriptLoader final : public ModelLoader {
 public:
  StatusOr<std::shared_ptr<Model>> Load(const ModelConfig& config) override {
    InitWorkerThread();
    auto device = ParseDevice(config.device);
    if (!device.ok()) return device.status();
    if (!config.sha256.empty()) {
      auto digest = FileSha256(config.path);
      if (!digest.ok()) return digest.status();
      if (*digest != config.sha256) {
        return FailedPrecondition("sha256 of " + config.path + " is " + *digest + ", the config pins " + config.sha256);
      }
    }
    if (IsAotInductorPackage(config.path)) return LoadAotInductorModel(config);
    // A trained model resumes from its checkpoint, so nothing learnt is lost.
    const std::string& ckpt = config.training.checkpoint_path;
    const bool resume = config.training.enabled && !ckpt.empty() && ::access(ckpt.c_str(), R_OK) == 0;
    const std::string& file = resume ? ckpt : config.path;
    try {
      auto model = LoadTorchScriptModel(config, file, *device);
      if (!model.ok()) return model.status();
      if (resume) {
        (*model)->RestoreOptimizer(ckpt + ".optim");
        spdlog::info("model '{}' resumes from checkpoint {}", config.id, ckpt);
      }
      return std::shared_ptr<Model>(std::move(*model));
    } catch (const c10::Error& e) {
      return TorchScriptLoadError(file, e.what_without_backtrace());
    } catch (const std::exception& e) {
      return TorchScriptLoadError(file, e.what());
    }
  }

  void InitWorkerThread() override { at::set_num_threads(IntraOpThreads()); }
};

}  // namespace

std::string TorchBuildSummary() {
  std::ostringstream os;
  os << "libtorch " << TORCH_VERSION << ", " << BlasName() << ", CUDA "
     << (torch::cuda::is_available() ? std::to_string(torch::cuda::device_count()) + " device(s)" : "unavailable");
  return os.str();
}

void DisableTorchScriptFuser() { torch::jit::setTensorExprFuserEnabled(false); }

std::shared_ptr<ModelLoader> MakeTorchScriptLoader() {
  DisableTorchScriptFuser();
  return std::make_shared<TorchScriptLoader>();
}

Status CheckModelFormats(const Config& config) {
  if (AotInductorAvailable()) return Status::Ok();
  for (const auto& m : config.models) {
    if (IsAotInductorPackage(m.path)) return FailedPrecondition("models." + m.id + ": " + AotInductorUnavailableReason());
  }
  return Status::Ok();
}

}  // namespace splitlearnd
