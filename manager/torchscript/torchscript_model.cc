#include "manager/torchscript/torchscript_model.h"

#include <torch/csrc/jit/runtime/jit_exception.h>

#include <algorithm>

#include "manager/torchscript/convert.h"
#include "manager/torchscript/errors.h"
#include "manager/torchscript/threads.h"

namespace splitlearnd {
namespace {

bool IsKVListType(const c10::TypePtr& type) {
  auto list = type->cast<c10::ListType>();
  if (!list) return false;
  auto tuple = list->getElementType()->cast<c10::TupleType>();
  return tuple && tuple->elements().size() == 2 && tuple->elements()[0]->kind() == c10::TypeKind::TensorType &&
         tuple->elements()[1]->kind() == c10::TypeKind::TensorType;
}

std::vector<at::Tensor> Inputs(const InferenceRequest& r, const c10::Device& device) {
  std::vector<at::Tensor> inputs;
  inputs.reserve(r.inputs.size());
  for (const auto& in : r.inputs) inputs.push_back(ToComputeDtype(ToTensor(in.tensor, device), r));
  return inputs;
}

}  // namespace

std::vector<TorchScriptModel::ArgInfo> TorchScriptModel::ForwardArgs(const torch::jit::Module& module) {
  std::vector<ArgInfo> result;
  const auto& args = module.get_method("forward").function().getSchema().arguments();
  for (size_t i = 1; i < args.size(); ++i) {  // 0 is self
    ArgInfo a;
    a.name = args[i].name();
    c10::TypePtr type = args[i].type();
    if (auto opt = type->cast<c10::OptionalType>()) {
      a.optional = true;
      type = opt->getElementType();
    }
    a.has_default = args[i].default_value().has_value();
    if (type->kind() == c10::TypeKind::TensorType) a.kind = ArgKind::kTensor;
    else if (IsKVListType(type)) a.kind = ArgKind::kKVList;
    else if (type->kind() == c10::TypeKind::BoolType) a.kind = ArgKind::kBool;
    result.push_back(std::move(a));
  }
  return result;
}

TorchScriptModel::TorchScriptModel(const ModelConfig& config, torch::jit::Module module, c10::Device device,
                                   int64_t parameter_bytes)
    : id_(config.id), device_name_(config.device), device_(device), module_(std::move(module)),
      args_(ForwardArgs(module_)),
      takes_cache_(std::any_of(args_.begin(), args_.end(), [](const ArgInfo& a) { return a.kind == ArgKind::kKVList; })),
      parameter_bytes_(parameter_bytes), warmup_(config.warmup), compute_dtype_(config.compute_dtype),
      blas_threads_(config.blas_threads), sessions_(std::make_unique<SessionStore>(config.id)),
      training_(std::make_unique<Training>(config.id, module_, device, config.training)) {}

ModelStats TorchScriptModel::Stats() const {
  ModelStats s;
  s.sessions = sessions_->count();
  s.session_bytes = sessions_->bytes();
  s.training_graphs = training_->graphs();
  s.training_graph_bytes = training_->graph_bytes();
  s.optimizer_steps = training_->optimizer_steps();
  return s;
}

void TorchScriptModel::ApplyBlasThreads() const {
  if (device_.is_cpu()) UseBlasThreads(blas_threads_);
}

std::vector<StatusOr<InferenceResult>> TorchScriptModel::Run(const std::vector<const InferenceRequest*>& batch) const {
  ApplyBlasThreads();
  std::vector<StatusOr<InferenceResult>> results;
  results.reserve(batch.size());
  if (batch.size() > 1) {
    // Otherwise (not mergeable after all, a forward that failed, or outputs that do
    // not split along dim 0) nothing was added: serve one by one, so that each request
    // gets its own answer and one client's bad input never fails another's request.
    if (RunMerged(batch, &results)) return results;
  }
  for (const InferenceRequest* r : batch) results.push_back(RunOne(*r));
  return results;
}

Status TorchScriptModel::Warmup(int max_batch_size) const {
  return RunWarmup(*this, warmup_, compute_dtype_, max_batch_size);
}

StatusOr<InferenceResult> TorchScriptModel::Backward(const BackwardRequest& request) const {
  ApplyBlasThreads();
  return training_->Backward(request);
}

StatusOr<std::string> TorchScriptModel::OpenSession(const std::string& wanted, const SessionConfig& limits) const {
  if (!takes_cache_) return FailedPrecondition("model '" + id_ + "' takes no past_key_values, so it has no sessions");
  if (limits.max_sessions <= 0) return FailedPrecondition("sessions are disabled for model '" + id_ + "'");
  return sessions_->Open(wanted, limits);
}

StatusOr<int64_t> TorchScriptModel::CloseSession(const std::string& id) const { return sessions_->Close(id); }

void TorchScriptModel::Maintain(const SessionConfig& sessions, const TrainingConfig& training) const {
  sessions_->Expire(sessions);
  training_->Expire(training);
}

Status TorchScriptModel::SaveCheckpoint(const std::string& path) const { return training_->SaveCheckpoint(path); }

StatusOr<InferenceResult> TorchScriptModel::RunOne(const InferenceRequest& request) const {
  try {
    if (request.training) {
      return training_->Forward(request, [&](const std::vector<at::Tensor>& inputs) {
        return Forward(request, inputs, {}, request.use_cache);
      });
    }
    c10::InferenceMode guard;
    std::vector<at::Tensor> inputs = Inputs(request, device_);
    if (!request.session_id.empty()) return SessionStep(request, inputs);
    KVList past;
    for (const auto& kv : request.past_key_values) {
      past.emplace_back(ToComputeDtype(ToTensor(kv.key, device_), request), ToComputeDtype(ToTensor(kv.value, device_), request));
    }
    auto out = Forward(request, inputs, past, request.use_cache || !past.empty());
    if (!out.ok()) return out.status();
    auto read = ReadOutput(*out);
    if (!read.ok()) return read.status();
    return CollectOutputs(*read, request, nullptr, true);
  } catch (const torch::jit::JITException& e) {
    return ModelError(e.what(), /*raised_by_model=*/true);
  } catch (const c10::Error& e) {
    return ModelError(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return ModelError(e.what());
  }
}

bool TorchScriptModel::RunMerged(const std::vector<const InferenceRequest*>& batch,
                                 std::vector<StatusOr<InferenceResult>>* results) const {
  const InferenceRequest& head = *batch.front();
  std::vector<int64_t> rows;
  int64_t total = 0;
  if (!MergedRows(batch, &rows, &total)) return false;
  try {
    c10::InferenceMode guard;
    std::vector<at::Tensor> merged;
    for (size_t i = 0; i < head.inputs.size(); ++i) {
      std::vector<at::Tensor> parts;
      parts.reserve(batch.size());
      for (const auto* r : batch) parts.push_back(ToTensor(r->inputs[i].tensor, at::kCPU));
      at::Tensor cat = torch::cat(parts, 0);
      merged.push_back(ToComputeDtype(device_.is_cpu() ? cat : cat.to(device_), head));
    }
    auto out = Forward(head, merged, {}, false);
    if (!out.ok()) return false;
    // Every output must have `total` rows to be split; a cache never is.
    auto read = ReadOutput(*out);
    if (!read.ok() || !read->cache.empty()) return false;
    for (const auto& t : read->tensors) {
      if (t.dim() == 0 || t.size(0) != total) return false;
    }
    int64_t offset = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      std::vector<at::Tensor> slice;
      for (const auto& t : read->tensors) slice.push_back(t.narrow(0, offset, rows[i]));
      offset += rows[i];
      results->push_back(CollectOutputs(*read, *batch[i], &slice, false));
    }
    return true;
  } catch (const std::exception&) {
    // Which request the forward choked on is unknown: each one alone will tell.
    results->clear();
    return false;
  }
}

StatusOr<InferenceResult> TorchScriptModel::SessionStep(const InferenceRequest& request,
                                                        const std::vector<at::Tensor>& inputs) const {
  auto past = sessions_->Past(request.session_id, request.session_limits);
  if (!past.ok()) return past.status();
  auto out = Forward(request, inputs, *past, true);
  if (!out.ok()) return out.status();
  auto read = ReadOutput(*out);
  if (!read.ok()) return read.status();
  if (!read->has_cache) return Internal("model '" + id_ + "' returned no cache for a session step");
  KVList present = std::move(read->cache);
  // The session outlives the request: a cache that views the request's own bytes
  // (inputs are wrapped, not copied) must get storage of its own.
  for (auto& [k, v] : present) {
    for (const auto& in : inputs) {
      if (k.is_alias_of(in)) k = k.clone();
      if (v.is_alias_of(in)) v = v.clone();
    }
  }
  auto result = CollectOutputs(*read, request, nullptr, false);
  if (!result.ok()) return result;
  auto tokens = sessions_->Commit(request.session_id, std::move(present), request.session_limits);
  if (!tokens.ok()) return tokens.status();
  result->session_id = request.session_id;
  result->session_tokens = *tokens;
  return result;
}

StatusOr<c10::IValue> TorchScriptModel::Forward(const InferenceRequest& request, const std::vector<at::Tensor>& inputs,
                                                const KVList& past, bool use_cache) const {
  auto& fn = module_.get_method("forward").function();
  const auto& schema_args = fn.getSchema().arguments();
  std::vector<c10::IValue> stack;
  stack.reserve(args_.size() + 1);
  stack.emplace_back(module_._ivalue());
  std::vector<bool> used(inputs.size(), false);
  for (const ArgInfo& arg : args_) {
    int found = -1;
    for (size_t i = 0; i < request.inputs.size(); ++i) {
      if (!used[i] && request.inputs[i].name == arg.name) { found = static_cast<int>(i); break; }
    }
    // Positional fallback: an unnamed input fills the next tensor argument.
    if (found < 0 && arg.kind == ArgKind::kTensor) {
      for (size_t i = 0; i < request.inputs.size(); ++i) {
        if (!used[i] && request.inputs[i].name.empty()) { found = static_cast<int>(i); break; }
      }
    }
    if (found >= 0) {
      if (arg.kind != ArgKind::kTensor) {
        return InvalidArgument("input '" + arg.name + "' is not a tensor argument of forward()");
      }
      used[found] = true;
      stack.emplace_back(inputs[found]);
      continue;
    }
    if (arg.kind == ArgKind::kKVList) {
      if (!past.empty() || !arg.optional || use_cache) {
        c10::impl::GenericList list(c10::TupleType::create({c10::TensorType::get(), c10::TensorType::get()}));
        for (const auto& [k, v] : past) list.push_back(c10::ivalue::Tuple::create(k, v));
        stack.emplace_back(std::move(list));
      } else {
        stack.emplace_back(c10::IValue());
      }
      continue;
    }
    if (arg.kind == ArgKind::kBool && arg.name == "use_cache") {
      stack.emplace_back(use_cache);
      continue;
    }
    const auto& schema_arg = schema_args[stack.size()];
    if (schema_arg.default_value()) {
      stack.push_back(*schema_arg.default_value());
    } else if (arg.optional) {
      stack.emplace_back(c10::IValue());
    } else {
      return InvalidArgument("missing required input '" + arg.name + "' of model '" + id_ + "'");
    }
  }
  for (size_t i = 0; i < used.size(); ++i) {
    if (!used[i]) {
      const std::string& n = request.inputs[i].name;
      return InvalidArgument(n.empty() ? "more unnamed inputs than forward() takes"
                                       : "forward() of model '" + id_ + "' has no argument '" + n + "'");
    }
  }
  if (!past.empty() && !takes_cache_) return InvalidArgument("model '" + id_ + "' takes no past_key_values");
  fn.run(stack);
  return stack.front();
}

}  // namespace splitlearnd
