#include "manager/torchscript/training.h"

#include <spdlog/spdlog.h>
#include <torch/serialize.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/jit_exception.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>

#include "common/files.h"
#include "manager/torchscript/convert.h"
#include "manager/torchscript/errors.h"
#include "manager/torchscript/random_id.h"
#include "manager/torchscript/outputs.h"

namespace splitlearnd {

Training::Training(std::string model_id, torch::jit::Module module, c10::Device device, const TrainingConfig& config)
    : model_id_(std::move(model_id)), module_(std::move(module)), device_(device),
      checkpoint_path_(config.checkpoint_path) {
  std::vector<at::Tensor> params;
  for (const auto& p : module_.parameters()) params.push_back(p);
  const bool trainable = config.enabled && config.optimizer != "none";
  for (auto& p : params) p.requires_grad_(trainable);
  if (!trainable || params.empty()) return;
  if (config.optimizer == "adam") {
    optimizer_ = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(config.learning_rate));
  } else {
    optimizer_ = std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(config.learning_rate).momentum(config.momentum));
  }
}

Training::~Training() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!optimizer_ || checkpoint_path_.empty() || steps_.load() <= saved_steps_) return;
  Status s = SaveLocked(checkpoint_path_);
  if (!s.ok()) spdlog::error("model '{}': final checkpoint failed: {}", model_id_, s.message());
  else spdlog::info("model '{}': checkpoint written to {} ({} optimizer steps)", model_id_, checkpoint_path_, steps_.load());
}

void Training::RestoreOptimizer(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!optimizer_) return;
  try {
    torch::load(*optimizer_, path);
  } catch (const c10::Error& e) {
    spdlog::warn("model '{}': optimizer state in {} not restored: {}", model_id_, path, e.what_without_backtrace());
  } catch (const std::exception& e) {
    spdlog::warn("model '{}': optimizer state in {} not restored: {}", model_id_, path, e.what());
  }
}

// An optimizer step changes the parameters in place, and autograd refuses a backward
// whose saved tensors changed since its forward. The stash gives the forward clones
// (gradients still flow to the parameters through them) and puts the parameters back
// afterwards; only the device worker runs the module, so nothing else sees the swap.
class Training::ParameterStash {
 public:
  explicit ParameterStash(const torch::jit::Module& module) {
    std::map<const c10::TensorImpl*, at::Tensor> copies;  // tied weights share one copy
    for (torch::jit::Module m : module.modules()) {
      for (const auto& p : m.named_parameters(/*recurse=*/false)) {
        auto [it, fresh] = copies.try_emplace(p.value.unsafeGetTensorImpl());
        if (fresh) {
          it->second = p.value.clone();
          bytes_ += static_cast<int64_t>(p.value.nbytes());
        }
        swapped_.push_back({m, p.name, p.value});
        m.setattr(p.name, it->second);
      }
    }
  }
  ~ParameterStash() {
    for (auto& s : swapped_) s.module.setattr(s.name, s.original);
  }
  ParameterStash(const ParameterStash&) = delete;
  ParameterStash& operator=(const ParameterStash&) = delete;
  int64_t bytes() const { return bytes_; }

 private:
  struct Swapped {
    torch::jit::Module module;
    std::string name;
    at::Tensor original;
  };
  std::vector<Swapped> swapped_;
  int64_t bytes_ = 0;
};

StatusOr<InferenceResult> Training::Forward(const InferenceRequest& request, const ForwardFn& forward) {
  if (!request.training_config.enabled) return FailedPrecondition("training is not enabled for model '" + model_id_ + "'");
  torch::AutoGradMode enable(true);
  Graph graph;
  // Own copies: the graph outlives the request's bytes.
  for (const auto& in : request.inputs) {
    at::Tensor t = ToComputeDtype(ToTensor(in.tensor, device_), request).clone();
    if (at::isFloatingType(t.scalar_type())) t.requires_grad_(true);
    graph.bytes += static_cast<int64_t>(t.nbytes());
    graph.inputs.push_back(t);
    graph.names.push_back(in.name.empty() ? "grad_input" : "grad_" + in.name);
    graph.input_dtypes.push_back(in.tensor.dtype);
  }
  StatusOr<c10::IValue> out = [&] {
    std::optional<ParameterStash> stash;
    if (optimizer_) graph.bytes += stash.emplace(module_).bytes();
    return forward(graph.inputs);
  }();
  if (!out.ok()) return out.status();
  auto read = ReadOutput(*out);
  if (!read.ok()) return read.status();
  // The client sends the gradient of the primary output, and of further outputs by
  // name if it wants; the cache is answered, not differentiated.
  graph.output = read->tensors.front();
  if (!graph.output.requires_grad()) {
    return FailedPrecondition("the output of model '" + model_id_ + "' does not depend on a trainable input or parameter");
  }
  graph.bytes += static_cast<int64_t>(graph.output.nbytes());
  for (size_t i = 1; i < read->tensors.size(); ++i) {
    if (!read->tensors[i].requires_grad()) continue;
    graph.named_outputs.emplace_back(read->names[i], read->tensors[i]);
    graph.bytes += static_cast<int64_t>(read->tensors[i].nbytes());
  }
  graph.created = Clock::now();

  // Inference's answer to the same output.
  StatusOr<InferenceResult> result = [&] {
    torch::NoGradGuard no_grad;
    return CollectOutputs(*read, request, nullptr, true);
  }();
  if (!result.ok()) return result;
  std::lock_guard<std::mutex> lock(mu_);
  result->forward_id = request.forward_id.empty() ? UnguessableId("f-", ++serial_) : request.forward_id;
  Keep(result->forward_id, std::move(graph), request.training_config);
  return result;
}

void Training::Keep(const std::string& id, Graph graph, const TrainingConfig& config) {
  graphs_.erase(id);
  UpdateStatsLocked();
  // Bounded by count, bytes and age: the oldest graphs go first.
  while (!graphs_.empty() && (static_cast<int>(graphs_.size()) >= config.max_graphs ||
                              graph_bytes_.load() + graph.bytes > config.max_graph_bytes)) {
    auto oldest = std::min_element(graphs_.begin(), graphs_.end(), [](const auto& a, const auto& b) {
      return a.second.created < b.second.created;
    });
    graphs_.erase(oldest);
    UpdateStatsLocked();
  }
  graphs_.emplace(id, std::move(graph));
  UpdateStatsLocked();
}

namespace {

// A gradient of another shape than its output's: INVALID_ARGUMENT naming both.
Status ShapeMismatch(const std::string& what, const std::vector<int64_t>& got, const at::Tensor& output) {
  std::ostringstream os;
  os << what << " shape " << c10::IntArrayRef(got) << " does not match the output's shape " << output.sizes();
  return InvalidArgument(os.str());
}

}  // namespace

// A gradient holding NaN or infinity would poison the shared parameters at the step.
Status Training::CheckFinite(const BackwardRequest& request) const {
  auto finite = [](const HostTensor& h) {
    const at::Tensor t = ToTensor(h, at::kCPU);
    return !at::isFloatingType(t.scalar_type()) || at::isfinite(t).all().item<bool>();
  };
  if (!finite(request.grad_output)) return InvalidArgument("grad_output holds NaN or infinity");
  for (const auto& g : request.named_grad_outputs) {
    if (!finite(g.tensor)) return InvalidArgument("grad_output '" + g.name + "' holds NaN or infinity");
  }
  return Status::Ok();
}

StatusOr<InferenceResult> Training::Backward(const BackwardRequest& request) {
  if (request.learning_rate && *request.learning_rate > request.training_config.max_learning_rate) {
    std::ostringstream os;
    os << "learning_rate " << *request.learning_rate << " is above model '" << model_id_
       << "''s training.max_learning_rate " << request.training_config.max_learning_rate;
    return InvalidArgument(os.str());
  }
  if (auto s = CheckFinite(request); !s.ok()) return s;
  Graph graph;
  // The outputs the gradients flow from, each with its gradient: the primary first.
  Targets targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = graphs_.find(request.forward_id);
    if (it == graphs_.end()) {
      return NotFound("unknown or expired forward_id '" + request.forward_id + "' for model '" + model_id_ + "'");
    }
    // A grad_output of the wrong shape leaves the graph where it is: a corrected retry
    // still finds it.
    if (it->second.output.sizes().vec() != request.grad_output.shape) {
      return ShapeMismatch("grad_output", request.grad_output.shape, it->second.output);
    }
    targets.emplace_back(it->second.output, &request.grad_output);
    for (const auto& g : request.named_grad_outputs) {
      const auto& outs = it->second.named_outputs;
      auto o = std::find_if(outs.begin(), outs.end(), [&](const auto& n) { return n.first == g.name; });
      if (o == outs.end()) {
        return InvalidArgument("grad_output '" + g.name + "': forward '" + request.forward_id +
                               "' has no differentiable output of that name");
      }
      if (o->second.sizes().vec() != g.tensor.shape) {
        return ShapeMismatch("grad_output '" + g.name + "'", g.tensor.shape, o->second);
      }
      targets.emplace_back(o->second, &g.tensor);
    }
    graph = std::move(it->second);
    graphs_.erase(it);
    UpdateStatsLocked();
  }
  // The backward pass runs without mu_: only the optimizer step, which a checkpoint
  // written from another thread reads, needs it.
  auto failed = [&](Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (optimizer_) optimizer_->zero_grad();
    return status;
  };
  try {
    return Gradients(graph, targets, request);
  } catch (const torch::jit::JITException& e) {
    return failed(ModelError(e.what(), /*raised_by_model=*/true));
  } catch (const c10::Error& e) {
    return failed(ModelError(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    // Errors from the part of backward the TorchScript interpreter runs (out of
    // memory, for one) arrive as plain std::exception.
    return failed(ModelError(e.what()));
  }
}

StatusOr<InferenceResult> Training::Gradients(const Graph& graph, const Targets& targets,
                                              const BackwardRequest& request) {
  std::vector<at::Tensor> outputs, grads;
  for (const auto& [output, grad] : targets) {
    outputs.push_back(output);
    grads.push_back(ToTensor(*grad, device_).to(output.scalar_type()));
  }
  torch::AutoGradMode enable(true);
  torch::autograd::backward(outputs, grads);
  InferenceResult result;
  for (size_t i = 0; i < graph.inputs.size(); ++i) {
    const at::Tensor& in = graph.inputs[i];
    if (!in.requires_grad()) continue;
    at::Tensor g = in.grad().defined() ? in.grad() : torch::zeros_like(in);
    auto h = ToHost(g, std::nullopt, graph.input_dtypes[i]);
    if (!h.ok()) return h.status();
    result.outputs.push_back(NamedTensor{graph.names[i], std::move(*h)});
  }
  if (result.outputs.empty()) return FailedPrecondition("the forward had no floating input to differentiate");
  Step(request);
  result.forward_id = request.forward_id;
  result.optimizer_steps = steps_.load();
  return result;
}

void Training::Step(const BackwardRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!optimizer_) return;
  const int every = std::max(1, request.accumulation_steps);
  if (++backwards_ % every != 0) return;  // keep accumulating
  const double lr = request.learning_rate.value_or(request.training_config.learning_rate);
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
  optimizer_->step();
  optimizer_->zero_grad();
  steps_.fetch_add(1);
}

void Training::Expire(const TrainingConfig& config) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  for (auto it = graphs_.begin(); it != graphs_.end();) {
    if (now - it->second.created > std::chrono::duration<double>(config.graph_ttl_s)) it = graphs_.erase(it);
    else ++it;
  }
  UpdateStatsLocked();
}

Status Training::SaveCheckpoint(const std::string& path) {
  if (path.empty()) return FailedPrecondition("model '" + model_id_ + "' has no training.checkpoint_path");
  std::lock_guard<std::mutex> lock(mu_);
  return SaveLocked(path);
}

Status Training::SaveLocked(const std::string& path) {
  if (!optimizer_) return FailedPrecondition("model '" + model_id_ + "' is not trained on the server");
  const std::string optim = path + ".optim";
  std::string tmp;
  try {
    // torch writes each temporary file itself; CommitFile makes it the real one.
    tmp = path + ".tmp";
    module_.save(tmp);
    if (auto s = CommitFile(tmp, path); !s.ok()) return s;
    tmp = optim + ".tmp";
    torch::save(*optimizer_, tmp);
    if (auto s = CommitFile(tmp, optim); !s.ok()) return s;
  } catch (const c10::Error& e) {
    std::remove(tmp.c_str());
    return Internal("checkpoint of '" + model_id_ + "' failed: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    return Internal("checkpoint of '" + model_id_ + "' failed: " + e.what());
  }
  saved_steps_ = steps_.load();
  return Status::Ok();
}

void Training::UpdateStatsLocked() {
  int64_t bytes = 0;
  for (const auto& [id, g] : graphs_) bytes += g.bytes;
  graph_count_ = static_cast<int64_t>(graphs_.size());
  graph_bytes_ = bytes;
}

}  // namespace splitlearnd
