// The adapter's translation unit: with optimize.h, the only code that includes libtorch.
// See torchscript.h.
#include "manager/torchscript/torchscript.h"

#include "manager/torchscript/aoti_model.h"
#include "manager/torchscript/convert.h"
#include "manager/torchscript/errors.h"
#include "manager/torchscript/optimize.h"
#include "manager/torchscript/threads.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <torch/cuda.h>
#include <torch/optim.h>
#include <torch/serialize.h>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>
#include <torch/csrc/jit/runtime/jit_exception.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>


namespace splitlearnd {
namespace {

using SteadyClock = std::chrono::steady_clock;

// An id the server hands out (session, training forward): a prefix and serial that read
// well in logs, then 128 random bits, so that nobody can guess another client's id.
std::string UnguessableId(const char* prefix, uint64_t serial) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    std::random_device rd;
    for (auto& b : bytes) b = static_cast<unsigned char>(rd() & 0xff);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = std::string(prefix) + std::to_string(serial) + "-";
  for (unsigned char b : bytes) {
    id += kHex[b >> 4];
    id += kHex[b & 15];
  }
  return id;
}

// ---------------------------------------------------------------- the model

enum class ArgKind { kTensor, kKVList, kBool, kOther };

struct ArgInfo {
  std::string name;
  ArgKind kind = ArgKind::kOther;
  bool optional = false;     // Optional[...] type
  bool has_default = false;  // has a default value in the signature
};

bool IsKVListType(const c10::TypePtr& type) {
  auto list = type->cast<c10::ListType>();
  if (!list) return false;
  auto tuple = list->getElementType()->cast<c10::TupleType>();
  return tuple && tuple->elements().size() == 2 && tuple->elements()[0]->kind() == c10::TypeKind::TensorType &&
         tuple->elements()[1]->kind() == c10::TypeKind::TensorType;
}

using KVList = std::vector<std::pair<at::Tensor, at::Tensor>>;

int64_t KVBytes(const KVList& kv) {
  int64_t n = 0;
  for (const auto& [k, v] : kv) n += static_cast<int64_t>(k.nbytes() + v.nbytes());
  return n;
}

// Writes `path` through a temporary file: write, fsync, rename, fsync the directory,
// so a crash leaves either the old file or the new one, never half of one.
template <typename WriteFn>
Status AtomicWrite(const std::string& path, WriteFn write) {
  const std::string tmp = path + ".tmp";
  write(tmp);
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0) return Internal("cannot reopen " + tmp + ": " + std::strerror(errno));
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) return Internal("fsync of " + tmp + " failed: " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Internal("rename to " + path + " failed: " + std::strerror(errno));
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

// Bytes of a module's parameters and buffers.
int64_t ModuleBytes(const torch::jit::Module& module) {
  int64_t bytes = 0;
  for (const auto& p : module.parameters()) bytes += p.nbytes();
  for (const auto& b : module.buffers()) bytes += b.nbytes();
  return bytes;
}

class TorchScriptModel final : public Model {
 public:
  // `parameter_bytes`: ModuleBytes of the module as loaded (a frozen one holds its
  // parameters as constants, so the loader counts them before it optimizes).
  TorchScriptModel(const ModelConfig& config, torch::jit::Module module, c10::Device device, int64_t parameter_bytes)
      : id_(config.id), device_name_(config.device), device_(device), module_(std::move(module)),
        parameter_bytes_(parameter_bytes), training_(config.training), warmup_(config.warmup),
        compute_dtype_(config.compute_dtype), blas_threads_(config.blas_threads) {
    const auto& schema = module_.get_method("forward").function().getSchema();
    const auto& args = schema.arguments();
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
      args_.push_back(std::move(a));
    }
    takes_cache_ = std::any_of(args_.begin(), args_.end(), [](const ArgInfo& a) { return a.kind == ArgKind::kKVList; });
    for (const auto& p : module_.parameters()) params_.push_back(p);
    const bool trainable = training_.enabled && training_.optimizer != "none";
    for (auto& p : params_) p.requires_grad_(trainable);
    if (trainable && !params_.empty()) {
      if (training_.optimizer == "adam") {
        optimizer_ = std::make_unique<torch::optim::Adam>(params_, torch::optim::AdamOptions(training_.learning_rate));
      } else {
        optimizer_ = std::make_unique<torch::optim::SGD>(
            params_, torch::optim::SGDOptions(training_.learning_rate).momentum(training_.momentum));
      }
    }
  }

  ~TorchScriptModel() override {
    // Nothing learnt is lost: parameters changed since the last checkpoint are written.
    if (optimizer_ && !training_.checkpoint_path.empty() && steps_.load() > saved_steps_) {
      Status s = SaveCheckpoint(training_.checkpoint_path);
      if (!s.ok()) spdlog::error("model '{}': final checkpoint failed: {}", id_, s.message());
      else spdlog::info("model '{}': checkpoint written to {} ({} optimizer steps)", id_, training_.checkpoint_path, steps_.load());
    }
  }

  const std::string& id() const override { return id_; }
  const std::string& device() const override { return device_name_; }
  int64_t ParameterBytes() const override { return parameter_bytes_; }

  ModelStats Stats() const override {
    ModelStats s;
    s.sessions = session_count_.load();
    s.session_bytes = session_bytes_.load();
    s.training_graphs = graph_count_.load();
    s.training_graph_bytes = graph_bytes_.load();
    s.optimizer_steps = steps_.load();
    return s;
  }

  void RestoreOptimizer(const std::string& path) {
    if (!optimizer_) return;
    try {
      torch::load(*optimizer_, path);
    } catch (const c10::Error& e) {
      spdlog::warn("model '{}': optimizer state in {} not restored: {}", id_, path, e.what_without_backtrace());
    } catch (const std::exception& e) {
      spdlog::warn("model '{}': optimizer state in {} not restored: {}", id_, path, e.what());
    }
  }

  // On the cpu worker, before a forward: this model's OpenBLAS thread count (models on
  // other devices leave OpenBLAS alone).
  void ApplyBlasThreads() const {
    if (device_.is_cpu()) UseBlasThreads(blas_threads_);
  }

  std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const override {
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

  Status Warmup(int max_batch_size) const override {
    return RunWarmup(*this, warmup_, compute_dtype_, max_batch_size);
  }

  StatusOr<InferenceResult> RunOne(const InferenceRequest& request) const {
    try {
      if (request.training) return TrainingForward(request);
      c10::InferenceMode guard;
      std::vector<at::Tensor> inputs = Inputs(request, device_);
      if (!request.session_id.empty()) return SessionStep(request, inputs);
      KVList past;
      for (const auto& kv : request.past_key_values) {
        past.emplace_back(ToComputeDtype(ToTensor(kv.key, device_), request), ToComputeDtype(ToTensor(kv.value, device_), request));
      }
      auto out = Forward(request, inputs, past, request.use_cache || !past.empty());
      if (!out.ok()) return out.status();
      return Collect(*out, request, nullptr, true);
    } catch (const torch::jit::JITException& e) {
      return ModelError(e.what(), /*raised_by_model=*/true);
    } catch (const c10::Error& e) {
      return ModelError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      return ModelError(e.what());
    }
  }

  StatusOr<std::string> OpenSession(const std::string& wanted, const SessionConfig& limits) const override {
    if (!takes_cache_) return FailedPrecondition("model '" + id_ + "' takes no past_key_values, so it has no sessions");
    if (limits.max_sessions <= 0) return FailedPrecondition("sessions are disabled for model '" + id_ + "'");
    ExpireSessions(limits);
    if (static_cast<int>(sessions_.size()) >= limits.max_sessions) {
      return ResourceExhausted("model '" + id_ + "' already has " + std::to_string(sessions_.size()) +
                               " open sessions (max_sessions " + std::to_string(limits.max_sessions) + ")");
    }
    std::string id = wanted;
    if (id.empty()) {
      id = UnguessableId("s-", ++session_serial_);
    } else if (sessions_.count(id)) {
      return Status(StatusCode::kAlreadyExists, "session '" + id + "' is already open");
    }
    sessions_[id].last_used = SteadyClock::now();
    session_count_ = static_cast<int64_t>(sessions_.size());
    return id;
  }

  StatusOr<int64_t> CloseSession(const std::string& id) const override {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return NotFound("unknown or expired session '" + id + "'");
    const int64_t bytes = it->second.bytes;
    sessions_.erase(it);
    UpdateSessionStats();
    return bytes;
  }

  void Maintain(const SessionConfig& sessions, const TrainingConfig& training) const override {
    ExpireSessions(sessions);
    const auto now = SteadyClock::now();
    for (auto it = graphs_.begin(); it != graphs_.end();) {
      if (now - it->second.created > std::chrono::duration<double>(training.graph_ttl_s)) it = graphs_.erase(it);
      else ++it;
    }
    UpdateGraphStats();
  }

  StatusOr<InferenceResult> Backward(const BackwardRequest& request) const override {
    ApplyBlasThreads();
    auto it = graphs_.find(request.forward_id);
    if (it == graphs_.end()) {
      return NotFound("unknown or expired forward_id '" + request.forward_id + "' for model '" + id_ + "'");
    }
    // A grad_output of the wrong shape leaves the graph where it is: a corrected retry
    // still finds it.
    if (it->second.output.sizes().vec() != request.grad_output.shape) {
      std::ostringstream os;
      os << "grad_output shape " << c10::IntArrayRef(request.grad_output.shape)
         << " does not match the forward's output shape " << it->second.output.sizes();
      return InvalidArgument(os.str());
    }
    Graph graph = std::move(it->second);
    graphs_.erase(it);
    UpdateGraphStats();
    try {
      at::Tensor grad = ToTensor(request.grad_output, device_).to(graph.output.scalar_type());
      torch::AutoGradMode enable(true);
      graph.output.backward(grad);
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
    } catch (const torch::jit::JITException& e) {
      if (optimizer_) optimizer_->zero_grad();
      return ModelError(e.what(), /*raised_by_model=*/true);
    } catch (const c10::Error& e) {
      if (optimizer_) optimizer_->zero_grad();
      return ModelError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      // Errors from the part of backward the TorchScript interpreter runs (out of
      // memory, for one) arrive as plain std::exception.
      if (optimizer_) optimizer_->zero_grad();
      return ModelError(e.what());
    }
  }

  Status SaveCheckpoint(const std::string& path) const override {
    if (path.empty()) return FailedPrecondition("model '" + id_ + "' has no training.checkpoint_path");
    if (!optimizer_) return FailedPrecondition("model '" + id_ + "' is not trained on the server");
    try {
      if (auto s = AtomicWrite(path, [&](const std::string& tmp) { module_.save(tmp); }); !s.ok()) return s;
      if (auto s = AtomicWrite(path + ".optim", [&](const std::string& tmp) { torch::save(*optimizer_, tmp); }); !s.ok()) {
        return s;
      }
    } catch (const c10::Error& e) {
      return Internal("checkpoint of '" + id_ + "' failed: " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      return Internal("checkpoint of '" + id_ + "' failed: " + e.what());
    }
    saved_steps_ = steps_.load();
    return Status::Ok();
  }

 private:
  struct Session {
    KVList kv;
    int64_t bytes = 0;
    SteadyClock::time_point last_used;
  };
  struct Graph {
    std::vector<at::Tensor> inputs;
    std::vector<std::string> names;
    std::vector<DType> input_dtypes;
    at::Tensor output;
    int64_t bytes = 0;
    SteadyClock::time_point created;
  };

  std::vector<at::Tensor> Inputs(const InferenceRequest& r, const c10::Device& device) const {
    std::vector<at::Tensor> inputs;
    inputs.reserve(r.inputs.size());
    for (const auto& in : r.inputs) inputs.push_back(ToComputeDtype(ToTensor(in.tensor, device), r));
    return inputs;
  }

  void UpdateSessionStats() const {
    int64_t bytes = 0;
    for (const auto& [id, s] : sessions_) bytes += s.bytes;
    session_count_ = static_cast<int64_t>(sessions_.size());
    session_bytes_ = bytes;
  }

  void UpdateGraphStats() const {
    int64_t bytes = 0;
    for (const auto& [id, g] : graphs_) bytes += g.bytes;
    graph_count_ = static_cast<int64_t>(graphs_.size());
    graph_bytes_ = bytes;
  }

  void ExpireSessions(const SessionConfig& limits) const {
    const auto now = SteadyClock::now();
    bool changed = false;
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second.last_used > std::chrono::duration<double>(limits.idle_timeout_s)) {
        it = sessions_.erase(it);
        changed = true;
      } else {
        ++it;
      }
    }
    if (changed) UpdateSessionStats();
  }

  StatusOr<InferenceResult> SessionStep(const InferenceRequest& request, const std::vector<at::Tensor>& inputs) const {
    ExpireSessions(request.session_limits);
    auto it = sessions_.find(request.session_id);
    if (it == sessions_.end()) {
      return NotFound("unknown or expired session '" + request.session_id + "' of model '" + id_ + "'");
    }
    Session& session = it->second;
    auto out = Forward(request, inputs, session.kv, true);
    if (!out.ok()) return out.status();
    KVList present;
    if (!ExtractCache(*out, &present)) return Internal("model '" + id_ + "' returned no cache for a session step");
    // The session outlives the request: a cache that views the request's own bytes
    // (inputs are wrapped, not copied) must get storage of its own.
    for (auto& [k, v] : present) {
      for (const auto& in : inputs) {
        if (k.is_alias_of(in)) k = k.clone();
        if (v.is_alias_of(in)) v = v.clone();
      }
    }
    const int64_t bytes = KVBytes(present);
    const int64_t others = session_bytes_.load() - session.bytes;
    if (others + bytes > request.session_limits.max_bytes) {
      return ResourceExhausted("sessions of model '" + id_ + "' would hold " + std::to_string(others + bytes) +
                               " bytes, over max_bytes " + std::to_string(request.session_limits.max_bytes));
    }
    auto result = Collect(*out, request, nullptr, false);
    if (!result.ok()) return result;
    session.kv = std::move(present);
    session.bytes = bytes;
    session.last_used = SteadyClock::now();
    UpdateSessionStats();
    result->session_id = request.session_id;
    result->session_tokens = session.kv.empty() ? 0 : session.kv.front().first.size(2);
    return result;
  }

  StatusOr<InferenceResult> TrainingForward(const InferenceRequest& request) const {
    if (!request.training_config.enabled) return FailedPrecondition("training is not enabled for model '" + id_ + "'");
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
    auto out = Forward(request, graph.inputs, {}, false);
    if (!out.ok()) return out.status();
    std::vector<at::Tensor> flat;
    if (!Flatten(*out, &flat) || flat.empty()) return Internal("model returned no tensor");
    graph.output = flat.front();
    if (!graph.output.requires_grad()) {
      return FailedPrecondition("the output of model '" + id_ + "' does not depend on a trainable input or parameter");
    }
    graph.bytes += static_cast<int64_t>(graph.output.nbytes());
    graph.created = SteadyClock::now();

    InferenceResult result;
    {
      torch::NoGradGuard no_grad;
      auto h = ToHost(graph.output.detach(), request.output_dtype, request.inputs.front().tensor.dtype);
      if (!h.ok()) return h.status();
      result.outputs.push_back(NamedTensor{"output", std::move(*h)});
    }
    result.forward_id = request.forward_id.empty() ? UnguessableId("f-", ++graph_serial_) : request.forward_id;
    // Bounded by count, bytes and age: the oldest graphs go first.
    graphs_.erase(result.forward_id);
    const auto& t = request.training_config;
    while (!graphs_.empty() && (static_cast<int>(graphs_.size()) >= t.max_graphs ||
                                graph_bytes_.load() + graph.bytes > t.max_graph_bytes)) {
      auto oldest = std::min_element(graphs_.begin(), graphs_.end(), [](const auto& a, const auto& b) {
        return a.second.created < b.second.created;
      });
      graphs_.erase(oldest);
      UpdateGraphStats();
    }
    graphs_.emplace(result.forward_id, std::move(graph));
    UpdateGraphStats();
    return result;
  }

  void Step(const BackwardRequest& request) const {
    if (!optimizer_) return;
    const int every = std::max(1, request.accumulation_steps);
    if (++backwards_ % every != 0) return;  // keep accumulating
    const double lr = request.learning_rate.value_or(request.training_config.learning_rate);
    for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
    optimizer_->step();
    optimizer_->zero_grad();
    steps_.fetch_add(1);
  }

  static bool ExtractCache(const c10::IValue& out, KVList* kv) {
    auto take = [&](const c10::IValue& v) {
      for (const auto& item : v.toListRef()) {
        const auto& e = item.toTupleRef().elements();
        kv->emplace_back(e[0].toTensor(), e[1].toTensor());
      }
      return true;
    };
    if (out.isTuple()) {
      for (const auto& e : out.toTupleRef().elements()) {
        if (e.isList() && (e.toListRef().empty() || e.toListRef()[0].isTuple())) return take(e);
      }
    } else if (out.isGenericDict()) {
      for (const auto& e : out.toGenericDict()) {
        if (e.value().isList()) return take(e.value());
      }
    }
    return false;
  }

  // One forward over the concatenation of compatible requests, split back by rows.
  // Returns false, with nothing added to `results`, when the batch must be served one
  // request at a time instead.
  bool RunMerged(const std::vector<const InferenceRequest*>& batch, std::vector<StatusOr<InferenceResult>>* results) const {
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
      // Every output must have `total` rows to be split.
      std::vector<at::Tensor> flat;
      if (!Flatten(*out, &flat)) return false;
      for (const auto& t : flat) {
        if (t.dim() == 0 || t.size(0) != total) return false;
      }
      int64_t offset = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        std::vector<at::Tensor> slice;
        for (const auto& t : flat) slice.push_back(t.narrow(0, offset, rows[i]));
        offset += rows[i];
        results->push_back(Collect(*out, *batch[i], &slice, false));
      }
      return true;
    } catch (const std::exception&) {
      // Which request the forward choked on is unknown: each one alone will tell.
      results->clear();
      return false;
    }
  }

  StatusOr<c10::IValue> Forward(const InferenceRequest& request, const std::vector<at::Tensor>& inputs,
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

  // Tensors of an output, in order (KV lists excluded).
  static bool Flatten(const c10::IValue& out, std::vector<at::Tensor>* flat) {
    if (out.isTensor()) { flat->push_back(out.toTensor()); return true; }
    if (out.isTuple()) {
      for (const auto& e : out.toTupleRef().elements()) {
        if (e.isTensor()) flat->push_back(e.toTensor());
        else if (!(e.isList() || e.isNone())) return false;
        else if (e.isList() && e.toListRef().size() > 0) return false;  // a cache never merges
      }
      return true;
    }
    if (out.isTensorList()) {
      for (const auto& t : out.toTensorVector()) flat->push_back(t);
      return true;
    }
    if (out.isGenericDict()) {
      for (const auto& kv : out.toGenericDict()) {
        if (!kv.value().isTensor()) return false;
        flat->push_back(kv.value().toTensor());
      }
      return true;
    }
    return false;
  }

  static Status AppendKV(const c10::IValue& v, DType request_dtype, InferenceResult* result) {
    for (const auto& item : v.toListRef()) {
      if (!item.isTuple() || item.toTupleRef().elements().size() != 2) {
        return Internal("model returned a cache entry that is not a (key, value) pair");
      }
      const auto& kv = item.toTupleRef().elements();
      auto k = ToHost(kv[0].toTensor(), std::nullopt, request_dtype);
      auto val = ToHost(kv[1].toTensor(), std::nullopt, request_dtype);
      if (!k.ok()) return k.status();
      if (!val.ok()) return val.status();
      result->present_key_values.push_back(KVPair{std::move(*k), std::move(*val)});
    }
    return Status::Ok();
  }

  // Turns the forward's output into named host tensors. `slices` replaces the output's
  // tensors (in Flatten order) for one request of a merged batch; `with_cache` copies a
  // returned cache out as present_key_values.
  StatusOr<InferenceResult> Collect(const c10::IValue& out, const InferenceRequest& request,
                                    const std::vector<at::Tensor>* slices, bool with_cache) const {
    const DType request_dtype = request.inputs.empty() ? DType::kFloat32 : request.inputs.front().tensor.dtype;
    InferenceResult result;
    size_t next_slice = 0;
    auto add = [&](const std::string& name, const at::Tensor& t) -> Status {
      auto h = ToHost(slices ? (*slices)[next_slice++] : t, request.output_dtype, request_dtype);
      if (!h.ok()) return h.status();
      result.outputs.push_back(NamedTensor{name, std::move(*h)});
      return Status::Ok();
    };
    auto add_cache = [&](const c10::IValue& v) -> Status {
      return with_cache ? AppendKV(v, request_dtype, &result) : Status::Ok();
    };
    if (out.isTensor()) {
      if (auto s = add("output", out.toTensor()); !s.ok()) return s;
    } else if (out.isTuple() || out.isTensorList()) {
      std::vector<c10::IValue> elems;
      if (out.isTuple()) {
        elems = out.toTupleRef().elements().vec();
      } else {
        for (const auto& t : out.toTensorVector()) elems.emplace_back(t);
      }
      for (size_t i = 0; i < elems.size(); ++i) {
        const auto& e = elems[i];
        if (e.isTensor()) {
          if (auto s = add("output_" + std::to_string(i), e.toTensor()); !s.ok()) return s;
        } else if (e.isList() && (e.toListRef().empty() || e.toListRef()[0].isTuple())) {
          if (auto s = add_cache(e); !s.ok()) return s;
        } else if (!e.isNone()) {
          return Internal("model output " + std::to_string(i) + " is neither a tensor nor a cache");
        }
      }
    } else if (out.isGenericDict()) {
      for (const auto& kv : out.toGenericDict()) {
        const std::string name = kv.key().isString() ? kv.key().toStringRef() : "output";
        if (kv.value().isTensor()) {
          if (auto s = add(name, kv.value().toTensor()); !s.ok()) return s;
        } else if (kv.value().isList()) {
          if (auto s = add_cache(kv.value()); !s.ok()) return s;
        }
      }
    } else {
      return Internal(std::string("model returned an unsupported value of type ") + out.tagKind());
    }
    if (result.outputs.empty()) return Internal("model returned no tensor");
    return result;
  }

  const std::string id_;
  const std::string device_name_;
  const c10::Device device_;
  // Everything mutable below is touched only by the device worker thread (Run,
  // Backward, session calls; see model.h), except the atomics read by Stats().
  mutable torch::jit::Module module_;
  std::vector<ArgInfo> args_;
  bool takes_cache_ = false;
  const int64_t parameter_bytes_;
  const TrainingConfig training_;
  const WarmupConfig warmup_;
  const std::optional<DType> compute_dtype_;  // warmup converts as requests are converted
  const int blas_threads_;  // 0: the process's setting
  std::vector<at::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;

  mutable std::map<std::string, Session> sessions_;
  mutable std::map<std::string, Graph> graphs_;
  mutable uint64_t session_serial_ = 0, graph_serial_ = 0;
  mutable int64_t backwards_ = 0;
  mutable int64_t saved_steps_ = 0;
  mutable std::atomic<int64_t> session_count_{0}, session_bytes_{0}, graph_count_{0}, graph_bytes_{0}, steps_{0};
};

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

class TorchScriptLoader final : public ModelLoader {
 public:
  StatusOr<std::shared_ptr<Model>> Load(const ModelConfig& config) override {
    InitWorkerThread();
    auto device = ParseDevice(config.device);
    if (!device.ok()) return device.status();
    if (!config.sha256.empty()) {
      auto digest = Sha256File(config.path);
      if (!digest.ok()) return digest.status();
      if (*digest != config.sha256) {
        return FailedPrecondition("sha256 of " + config.path + " is " + *digest + ", the config pins " + config.sha256);
      }
    }
    if (IsAotInductorPackage(config.path)) return LoadAotInductorModel(config);
    std::shared_ptr<TorchScriptModel> model;
    // A trained model resumes from its checkpoint, so nothing learnt is lost.
    const std::string& ckpt = config.training.checkpoint_path;
    const bool resume = config.training.enabled && !ckpt.empty() && ::access(ckpt.c_str(), R_OK) == 0;
    const std::string& file = resume ? ckpt : config.path;
    try {
      torch::jit::Module module = torch::jit::load(file, *device);
      module.eval();
      if (!module.find_method("forward")) return InvalidArgument(file + " has no forward() method");
      const int64_t parameter_bytes = ModuleBytes(module);
      if (config.optimize) module = OptimizeForInference(module, /*prepack_linear=*/false);
      if (config.prepack_linear) {
        if (!PrepackLinearSupported()) {
          spdlog::warn("model '{}': prepack_linear needs a CPU with AVX2 and FMA; this one runs BLAS as before",
                       config.id);
        } else {
          spdlog::info("model '{}': {} linear layer(s) run on weights prepacked at load", config.id,
                       PrepackLinearWeights(module));
        }
      }
      model = std::make_shared<TorchScriptModel>(config, std::move(module), *device, parameter_bytes);
      if (resume) {
        model->RestoreOptimizer(ckpt + ".optim");
        spdlog::info("model '{}' resumes from checkpoint {}", config.id, ckpt);
      }
    } catch (const c10::Error& e) {
      return TorchScriptLoadError(file, e.what_without_backtrace());
    } catch (const std::exception& e) {
      return TorchScriptLoadError(file, e.what());
    }
    return std::shared_ptr<Model>(std::move(model));
  }

  void InitWorkerThread() override { at::set_num_threads(IntraOpThreads()); }
};

// ---------------------------------------------------------------- shards

std::string TransformerSource(const ShardSpec& s) {
  std::ostringstream src;
  const int head_dim = s.hidden / s.heads;
  src << "def forward(self, hidden_states: Tensor) -> Tensor:\n"
      << "    x = hidden_states\n"
      << "    B = x.size(0)\n"
      << "    T = x.size(1)\n";
  if (s.causal) src << "    mask = torch.triu(torch.full([T, T], float('-inf'), dtype=x.dtype, device=x.device), 1)\n";
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "self.l" + std::to_string(l) + "_";
    src << "    h = torch.layer_norm(x, [" << s.hidden << "], " << p << "ln1_w, " << p << "ln1_b, 1e-5)\n"
        << "    qkv = torch.linear(h, " << p << "qkv_w, " << p << "qkv_b)\n"
        << "    q = qkv.narrow(-1, 0, " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    k = qkv.narrow(-1, " << s.hidden << ", " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    v = qkv.narrow(-1, " << 2 * s.hidden << ", " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    att = torch.matmul(q, k.transpose(-2, -1)) * " << 1.0 / std::sqrt(static_cast<double>(head_dim)) << "\n";
    if (s.causal) src << "    att = att + mask\n";
    src << "    att = torch.softmax(att, -1)\n"
        << "    y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, " << s.hidden << ")\n"
        << "    x = x + torch.linear(y, " << p << "proj_w, " << p << "proj_b)\n"
        << "    h = torch.layer_norm(x, [" << s.hidden << "], " << p << "ln2_w, " << p << "ln2_b, 1e-5)\n"
        << "    x = x + torch.linear(torch.gelu(torch.linear(h, " << p << "fc1_w, " << p << "fc1_b)), " << p << "fc2_w, " << p << "fc2_b)\n";
  }
  src << "    return x\n";
  return src.str();
}

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

Status WriteShard(const std::string& path, const ShardSpec& spec) {
  try {
    torch::manual_seed(spec.seed);
    c10::InferenceMode off(false);
    torch::NoGradGuard no_grad;
    const int64_t d = spec.hidden;
    auto w = [](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
    switch (spec.kind) {
      case ShardSpec::Kind::kIdentity: {
        torch::jit::Module m("IdentityShard");
        m.define("def forward(self, x: Tensor) -> Tensor:\n    return x\n");
        m.save(path);
        break;
      }
      case ShardSpec::Kind::kTiny: {
        torch::jit::Module m("TinyShard");
        m.register_parameter("w", w({d, d}), false);
        m.register_parameter("b", torch::zeros({d}), false);
        m.define("def forward(self, x: Tensor) -> Tensor:\n    return torch.gelu(torch.linear(x, self.w, self.b))\n");
        m.save(path);
        break;
      }
      case ShardSpec::Kind::kTransformer: {
        if (spec.heads < 1 || d % spec.heads != 0) return InvalidArgument("hidden size must be a multiple of heads");
        torch::jit::Module m("TransformerTrunk");
        for (int l = 0; l < spec.layers; ++l) {
          const std::string p = "l" + std::to_string(l) + "_";
          m.register_parameter(p + "ln1_w", torch::ones({d}), false);
          m.register_parameter(p + "ln1_b", torch::zeros({d}), false);
          m.register_parameter(p + "qkv_w", w({3 * d, d}), false);
          m.register_parameter(p + "qkv_b", torch::zeros({3 * d}), false);
          m.register_parameter(p + "proj_w", w({d, d}), false);
          m.register_parameter(p + "proj_b", torch::zeros({d}), false);
          m.register_parameter(p + "ln2_w", torch::ones({d}), false);
          m.register_parameter(p + "ln2_b", torch::zeros({d}), false);
          m.register_parameter(p + "fc1_w", w({spec.ffn, d}), false);
          m.register_parameter(p + "fc1_b", torch::zeros({spec.ffn}), false);
          m.register_parameter(p + "fc2_w", w({d, spec.ffn}), false);
          m.register_parameter(p + "fc2_b", torch::zeros({d}), false);
        }
        m.define(TransformerSource(spec));
        m.save(path);
        break;
      }
    }
  } catch (const c10::Error& e) {
    return Internal(std::string("cannot write shard: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("cannot write shard: ") + e.what());
  }
  return Status::Ok();
}

StatusOr<std::string> Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

}  // namespace splitlearnd
