// See aoti_model.h.
#include "manager/torchscript/aoti_model.h"

#include "manager/torchscript/torch_compat.h"

#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <algorithm>

#if SPLITLEARND_HAVE_AOTI
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <optional>
#include <unordered_map>
#include <vector>

#include "manager/torchscript/aoti_spec.h"
#include "manager/torchscript/convert.h"
#include "manager/torchscript/errors.h"
#include "manager/torchscript/threads.h"
#endif

namespace splitlearnd {

bool IsAotInductorPackage(const std::string& path) {
  return path.size() > 4 && path.compare(path.size() - 4, 4, ".pt2") == 0;
}

#if !SPLITLEARND_HAVE_AOTI

bool AotInductorAvailable() { return false; }

std::string AotInductorUnavailableReason() {
  return std::string("AOTInductor packages (.pt2) need splitlearnd built on libtorch 2.6 or later; this build has "
                     "libtorch ") + TORCH_VERSION + " (docs/building.md)";
}

StatusOr<std::shared_ptr<Model>> LoadAotInductorModel(const ModelConfig& config) {
  return FailedPrecondition("model '" + config.id + "': " + AotInductorUnavailableReason());
}

#else

bool AotInductorAvailable() { return true; }
std::string AotInductorUnavailableReason() { return ""; }

namespace {

using Loader = torch::inductor::AOTIModelPackageLoader;

// Output names: `splitlearnd.outputs` (comma-separated) where the package has it, else
// "output" for one output and "output_<i>" for several, as for TorchScript tuples.
std::vector<std::string> SplitNames(const std::string& text) {
  std::vector<std::string> names;
  size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    const size_t comma = text.find(',', start);
    names.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return names;
}

class AotiModel final : public Model {
 public:
  AotiModel(const ModelConfig& config, std::unique_ptr<Loader> loader, c10::Device device, int64_t bytes,
            std::vector<AotiInput> inputs, std::vector<std::string> output_names)
      : id_(config.id), device_name_(config.device), device_(device), bytes_(bytes), warmup_(config.warmup),
        compute_dtype_(config.compute_dtype), blas_threads_(config.blas_threads), loader_(std::move(loader)),
        inputs_(std::move(inputs)), output_names_(std::move(output_names)),
        max_rows_(AotiMaxBatchRows(inputs_)) {}

  const std::string& id() const override { return id_; }
  const std::string& device() const override { return device_name_; }
  int64_t ParameterBytes() const override { return bytes_; }

  std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const override {
    if (device_.is_cpu()) UseBlasThreads(blas_threads_);
    std::vector<StatusOr<InferenceResult>> results;
    results.reserve(batch.size());
    if (batch.size() > 1 && RunMerged(batch, &results)) return results;
    for (const InferenceRequest* r : batch) results.push_back(RunOne(*r));
    return results;
  }

  Status Warmup(int max_batch_size) const override {
    return RunWarmup(*this, warmup_, compute_dtype_, max_batch_size);
  }

 private:
  // The request's inputs in the package's order: named ones by name, unnamed ones
  // filling the remaining places in order.
  StatusOr<std::vector<const NamedTensor*>> Order(const InferenceRequest& r) const {
    std::vector<const NamedTensor*> ordered(inputs_.size(), nullptr);
    for (const NamedTensor& in : r.inputs) {
      if (in.name.empty()) continue;
      auto it = std::find_if(inputs_.begin(), inputs_.end(), [&](const AotiInput& s) { return s.name == in.name; });
      if (it == inputs_.end()) return InvalidArgument("model '" + id_ + "' has no input '" + in.name + "'");
      const size_t i = static_cast<size_t>(it - inputs_.begin());
      if (ordered[i]) return InvalidArgument("input '" + in.name + "' is given twice");
      ordered[i] = &in;
    }
    size_t next = 0;
    for (const NamedTensor& in : r.inputs) {
      if (!in.name.empty()) continue;
      while (next < ordered.size() && ordered[next]) ++next;
      if (next == ordered.size()) {
        return InvalidArgument("model '" + id_ + "' takes " + std::to_string(inputs_.size()) + " input(s), the request has more");
      }
      ordered[next] = &in;
    }
    for (size_t i = 0; i < ordered.size(); ++i) {
      if (!ordered[i]) return InvalidArgument("missing input '" + inputs_[i].name + "' of model '" + id_ + "'");
    }
    return ordered;
  }

  static Status Refuse(const InferenceRequest& r, const std::string& id) {
    if (r.training) return FailedPrecondition("model '" + id + "' is an AOTInductor package, which holds no backward: it cannot train");
    if (!r.session_id.empty() || r.use_cache || !r.past_key_values.empty()) {
      return InvalidArgument("model '" + id + "' is an AOTInductor package and takes no past_key_values");
    }
    return Status::Ok();
  }

  // The tensors to run, converted to the compute dtype, checked against the package's
  // input description, contiguous and on the device.
  StatusOr<std::vector<at::Tensor>> Prepare(const std::vector<std::vector<at::Tensor>>& columns,
                                            const InferenceRequest& head) const {
    std::vector<at::Tensor> tensors;
    std::vector<AotiArg> args;
    for (const auto& parts : columns) {
      at::Tensor t = parts.size() == 1 ? parts.front() : at::cat(parts, 0);
      t = ToComputeDtype(t, head).contiguous();
      const auto dtype = FromScalarType(t.scalar_type());
      if (!dtype) return InvalidArgument("unsupported input dtype");
      args.push_back(AotiArg{*dtype, t.sizes().vec()});
      tensors.push_back(std::move(t));
    }
    if (auto s = CheckAotiArgs(inputs_, args); !s.ok()) {
      return InvalidArgument("model '" + id_ + "' rejected the input: " + s.message());
    }
    if (!device_.is_cpu()) {
      for (auto& t : tensors) t = t.to(device_);
    }
    return tensors;
  }

  StatusOr<std::vector<at::Tensor>> Forward(const std::vector<at::Tensor>& tensors) const {
    try {
      c10::InferenceMode guard;
      std::optional<c10::DeviceGuard> device_guard;
      if (!device_.is_cpu()) device_guard.emplace(device_);
      return loader_->run(tensors);
    } catch (const c10::Error& e) {
      return ModelError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      return ModelError(e.what());
    }
  }

  StatusOr<InferenceResult> Collect(const std::vector<at::Tensor>& outputs, const InferenceRequest& r) const {
    const DType request_dtype = r.inputs.empty() ? DType::kFloat32 : r.inputs.front().tensor.dtype;
    InferenceResult result;
    for (size_t i = 0; i < outputs.size(); ++i) {
      auto h = ToHost(outputs[i], r.output_dtype, request_dtype);
      if (!h.ok()) return h.status();
      std::string name = i < output_names_.size() ? output_names_[i]
                                                  : (outputs.size() == 1 ? "output" : "output_" + std::to_string(i));
      result.outputs.push_back(NamedTensor{std::move(name), std::move(*h)});
    }
    if (result.outputs.empty()) return Internal("model '" + id_ + "' returned no tensor");
    return result;
  }

  StatusOr<InferenceResult> RunOne(const InferenceRequest& r) const {
    if (auto s = Refuse(r, id_); !s.ok()) return s;
    auto ordered = Order(r);
    if (!ordered.ok()) return ordered.status();
    try {
      std::vector<std::vector<at::Tensor>> columns;
      for (const NamedTensor* in : *ordered) columns.push_back({ToTensor(in->tensor, at::kCPU)});
      auto tensors = Prepare(columns, r);
      if (!tensors.ok()) return tensors.status();
      auto outputs = Forward(*tensors);
      if (!outputs.ok()) return outputs.status();
      return Collect(*outputs, r);
    } catch (const c10::Error& e) {
      return ModelError(e.what_without_backtrace());
    }
  }

  // One run over the concatenated rows of mergeable requests (at most the package's
  // batch maximum), split back by rows. False, with nothing added, when the batch must
  // be served one request at a time.
  bool RunMerged(const std::vector<const InferenceRequest*>& batch, std::vector<StatusOr<InferenceResult>>* results) const {
    const InferenceRequest& head = *batch.front();
    std::vector<int64_t> rows;
    int64_t total = 0;
    if (!MergedRows(batch, &rows, &total)) return false;
    if (total > max_rows_) return false;
    std::vector<std::vector<const NamedTensor*>> ordered;
    for (const auto* r : batch) {
      auto o = Order(*r);
      if (!o.ok()) return false;
      ordered.push_back(std::move(*o));
    }
    try {
      std::vector<std::vector<at::Tensor>> columns(inputs_.size());
      for (size_t i = 0; i < inputs_.size(); ++i) {
        for (const auto& o : ordered) columns[i].push_back(ToTensor(o[i]->tensor, at::kCPU));
      }
      auto tensors = Prepare(columns, head);
      if (!tensors.ok()) return false;
      auto outputs = Forward(*tensors);
      if (!outputs.ok()) return false;
      for (const auto& t : *outputs) {
        if (t.dim() == 0 || t.size(0) != total) return false;
      }
      int64_t offset = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        std::vector<at::Tensor> slice;
        for (const auto& t : *outputs) slice.push_back(t.narrow(0, offset, rows[i]));
        offset += rows[i];
        results->push_back(Collect(slice, *batch[i]));
      }
      return true;
    } catch (const std::exception&) {
      results->clear();
      return false;
    }
  }

  const std::string id_;
  const std::string device_name_;
  const c10::Device device_;
  const int64_t bytes_;
  const WarmupConfig warmup_;
  const std::optional<DType> compute_dtype_;
  const int blas_threads_;
  // Runs only on the device worker (model.h); the loader's run() is not const.
  const std::unique_ptr<Loader> loader_;
  const std::vector<AotiInput> inputs_;
  const std::vector<std::string> output_names_;
  const int64_t max_rows_;
};

}  // namespace

StatusOr<std::shared_ptr<Model>> LoadAotInductorModel(const ModelConfig& config) {
  const std::string& file = config.path;
  const std::string what = "AOTInductor package " + file + " of model '" + config.id + "'";
  if (config.training.enabled) {
    return FailedPrecondition(what + " cannot train: the package holds no backward (use a TorchScript file)");
  }
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return NotFound("cannot open " + file);
  const bool cuda = config.device.rfind("cuda", 0) == 0;
  c10::Device device(at::kCPU);
  if (cuda) device = c10::Device(config.device);
  std::unique_ptr<Loader> loader;
  std::unordered_map<std::string, std::string> metadata;
  try {
    std::optional<c10::DeviceGuard> device_guard;
    if (cuda) device_guard.emplace(device);
    loader = std::make_unique<Loader>(file);
    metadata = loader->get_metadata();
  } catch (const c10::Error& e) {
    return InvalidArgument("cannot load " + what + ": " + CauseLine(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return InvalidArgument("cannot load " + what + ": " + CauseLine(e.what()));
  }
  const auto device_key = metadata.find("AOTI_DEVICE_KEY");
  const std::string compiled_for = device_key == metadata.end() ? "cpu" : device_key->second;
  if (compiled_for != (cuda ? "cuda" : "cpu")) {
    return FailedPrecondition(what + " was compiled for " + compiled_for + ", the config puts it on " + config.device);
  }
  const auto inputs_key = metadata.find("splitlearnd.inputs");
  if (inputs_key == metadata.end()) {
    return FailedPrecondition(what + " does not describe its inputs (metadata key splitlearnd.inputs): a compiled "
                              "package does not check the shapes it is given, so splitlearnd serves only packages "
                              "that say what they take (examples/python/export_trunk.py writes it; docs/models.md)");
  }
  auto inputs = ParseAotiInputs(inputs_key->second);
  if (!inputs.ok()) return InvalidArgument(what + ": " + inputs.status().message());
  std::vector<std::string> outputs;
  if (auto it = metadata.find("splitlearnd.outputs"); it != metadata.end()) outputs = SplitNames(it->second);
  spdlog::info("model '{}': AOTInductor package for {}, inputs {}", config.id, compiled_for, FormatAotiInputs(*inputs));
  return std::shared_ptr<Model>(std::make_shared<AotiModel>(config, std::move(loader), device,
                                                            static_cast<int64_t>(st.st_size), std::move(*inputs),
                                                            std::move(outputs)));
}

#endif

}  // namespace splitlearnd
