// The only translation unit that includes libtorch. See torchscript.h.
#include "manager/torchscript/torchscript.h"

#include <dlfcn.h>
#include <openssl/evp.h>

#include <torch/cuda.h>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace splitlearnd {
namespace {

// ---------------------------------------------------------------- threads

std::once_flag g_threads_once;
std::atomic<int> g_intra{1};
std::atomic<int> g_inter{1};
std::atomic<int> g_blas{0};

int HardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

// OpenBLAS sizes its own pool at load time; it can be resized through this symbol,
// which libblas.so.3 exports when the OpenBLAS alternative is selected.
bool SetBlasThreads(int n) {
  using Fn = void (*)(int);
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!fn) return false;
  fn(n);
  return true;
}

std::string BlasName() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  return fn ? std::string("OpenBLAS ") + fn() : "reference BLAS (OpenBLAS not found: install libopenblas0-pthread)";
}

// ---------------------------------------------------------------- dtypes

at::ScalarType ToScalarType(DType t) {
  switch (t) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt64: return at::kLong;
    case DType::kInt32: return at::kInt;
    case DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

std::optional<DType> FromScalarType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kLong: return DType::kInt64;
    case at::kInt: return DType::kInt32;
    case at::kBool: return DType::kBool;
    default: return std::nullopt;
  }
}

bool IsFloating(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

// ---------------------------------------------------------------- tensors

// A view over the request's bytes where alignment allows, else one copy.
at::Tensor ToTensor(const HostTensor& h, const c10::Device& device) {
  const auto options = at::TensorOptions().dtype(ToScalarType(h.dtype));
  at::Tensor t;
  if (reinterpret_cast<uintptr_t>(h.data) % DTypeSize(h.dtype) == 0) {
    t = torch::from_blob(const_cast<void*>(h.data), h.shape, options);
  } else {
    t = torch::empty(h.shape, options);
    std::memcpy(t.data_ptr(), h.data, h.nbytes);
  }
  if (!device.is_cpu()) t = t.to(device);
  return t;
}

// The answer's dtype: what the request asked for; else, for floating outputs, the
// request's floating dtype (float32 for legacy clients); other outputs keep theirs.
StatusOr<HostTensor> ToHost(at::Tensor t, std::optional<DType> asked, DType request_dtype) {
  std::optional<DType> out = asked;
  const auto own = FromScalarType(t.scalar_type());
  if (!out) {
    if (at::isFloatingType(t.scalar_type())) {
      out = IsFloating(request_dtype) ? request_dtype : DType::kFloat32;
    } else if (own) {
      out = own;
    } else {
      return Internal(std::string("model returned an unsupported dtype ") + c10::toString(t.scalar_type()));
    }
  }
  if (t.scalar_type() != ToScalarType(*out)) t = t.to(ToScalarType(*out));
  if (!t.device().is_cpu()) t = t.to(at::kCPU);
  t = t.contiguous();
  auto holder = std::make_shared<at::Tensor>(std::move(t));
  HostTensor h;
  h.dtype = *out;
  h.shape = holder->sizes().vec();
  h.data = holder->data_ptr();
  h.nbytes = holder->nbytes();
  h.owner = std::move(holder);
  return h;
}

// Errors thrown by a model: shape complaints are the caller's fault, the rest is not.
Status ModelError(const std::string& what) {
  std::string msg = what.size() > 2000 ? what.substr(0, 2000) + "..." : what;
  static const char* kShapeHints[] = {"shape", "size mismatch", "must match the size", "cannot be multiplied",
                                      "dimension", "Expected", "expected", "out of range"};
  for (const char* hint : kShapeHints) {
    if (msg.find(hint) != std::string::npos && msg.find("Exception") == std::string::npos) {
      return InvalidArgument("model rejected the input: " + msg);
    }
  }
  return Internal("model failed: " + msg);
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

class TorchScriptModel final : public Model {
 public:
  TorchScriptModel(const ModelConfig& config, torch::jit::Module module, c10::Device device)
      : id_(config.id), device_name_(config.device), device_(device), module_(std::move(module)) {
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
    for (const auto& p : module_.parameters()) parameter_bytes_ += p.nbytes();
    for (const auto& b : module_.buffers()) parameter_bytes_ += b.nbytes();
  }

  const std::string& id() const override { return id_; }
  const std::string& device() const override { return device_name_; }
  int64_t ParameterBytes() const override { return parameter_bytes_; }

  std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const override {
    std::vector<StatusOr<InferenceResult>> results;
    results.reserve(batch.size());
    if (batch.size() > 1) {
      if (RunMerged(batch, &results)) return results;
      results.clear();  // outputs did not split along dim 0: serve one by one
    }
    for (const InferenceRequest* r : batch) results.push_back(RunOne(*r));
    return results;
  }

  StatusOr<InferenceResult> RunOne(const InferenceRequest& request) const {
    try {
      c10::InferenceMode guard;
      std::vector<at::Tensor> inputs;
      inputs.reserve(request.inputs.size());
      for (const auto& in : request.inputs) inputs.push_back(ToTensor(in.tensor, device_));
      auto out = Forward(request, inputs);
      if (!out.ok()) return out.status();
      return Collect(*out, request, nullptr);
    } catch (const c10::Error& e) {
      return ModelError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      return ModelError(e.what());
    }
  }

 private:
  // One forward over the concatenation of compatible requests, split back by rows.
  bool RunMerged(const std::vector<const InferenceRequest*>& batch, std::vector<StatusOr<InferenceResult>>* results) const {
    const InferenceRequest& head = *batch.front();
    std::vector<int64_t> rows;
    int64_t total = 0;
    for (const auto* r : batch) {
      rows.push_back(r->inputs.front().tensor.shape.front());
      total += rows.back();
    }
    try {
      c10::InferenceMode guard;
      std::vector<at::Tensor> merged;
      for (size_t i = 0; i < head.inputs.size(); ++i) {
        std::vector<at::Tensor> parts;
        parts.reserve(batch.size());
        for (const auto* r : batch) parts.push_back(ToTensor(r->inputs[i].tensor, at::kCPU));
        at::Tensor cat = torch::cat(parts, 0);
        merged.push_back(device_.is_cpu() ? cat : cat.to(device_));
      }
      auto out = Forward(head, merged);
      if (!out.ok()) {
        for (size_t i = 0; i < batch.size(); ++i) results->push_back(out.status());
        return true;
      }
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
        results->push_back(Collect(*out, *batch[i], &slice));
      }
      return true;
    } catch (const c10::Error& e) {
      for (size_t i = 0; i < batch.size(); ++i) results->push_back(ModelError(e.what_without_backtrace()));
      return true;
    } catch (const std::exception& e) {
      for (size_t i = 0; i < batch.size(); ++i) results->push_back(ModelError(e.what()));
      return true;
    }
  }

  StatusOr<c10::IValue> Forward(const InferenceRequest& request, const std::vector<at::Tensor>& inputs) const {
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
        if (!request.past_key_values.empty() || !arg.optional) {
          c10::impl::GenericList list(c10::TupleType::create({c10::TensorType::get(), c10::TensorType::get()}));
          for (const auto& kv : request.past_key_values) {
            list.push_back(c10::ivalue::Tuple::create(ToTensor(kv.key, device_), ToTensor(kv.value, device_)));
          }
          stack.emplace_back(std::move(list));
        } else {
          stack.emplace_back(c10::IValue());
        }
        continue;
      }
      if (arg.kind == ArgKind::kBool && arg.name == "use_cache") {
        stack.emplace_back(request.use_cache);
        continue;
      }
      const auto& schema_arg = module_.get_method("forward").function().getSchema().arguments()[stack.size()];
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
    if (!request.past_key_values.empty() &&
        std::none_of(args_.begin(), args_.end(), [](const ArgInfo& a) { return a.kind == ArgKind::kKVList; })) {
      return InvalidArgument("model '" + id_ + "' takes no past_key_values");
    }
    auto& fn = module_.get_method("forward").function();
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
  // tensors (in Flatten order) for one request of a merged batch.
  StatusOr<InferenceResult> Collect(const c10::IValue& out, const InferenceRequest& request,
                                    const std::vector<at::Tensor>* slices) const {
    const DType request_dtype = request.inputs.empty() ? DType::kFloat32 : request.inputs.front().tensor.dtype;
    InferenceResult result;
    size_t next_slice = 0;
    auto add = [&](const std::string& name, const at::Tensor& t) -> Status {
      auto h = ToHost(slices ? (*slices)[next_slice++] : t, request.output_dtype, request_dtype);
      if (!h.ok()) return h.status();
      result.outputs.push_back(NamedTensor{name, std::move(*h)});
      return Status::Ok();
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
          if (auto s = AppendKV(e, request_dtype, &result); !s.ok()) return s;
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
          if (auto s = AppendKV(kv.value(), request_dtype, &result); !s.ok()) return s;
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
  // Method calls on a Module are not const in libtorch's API; Run() is only ever
  // called from one thread (the device worker), see model.h.
  mutable torch::jit::Module module_;
  std::vector<ArgInfo> args_;
  int64_t parameter_bytes_ = 0;
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

HostTensor MakeWarmupTensor(const TensorSpec& spec) {
  at::Tensor t;
  const auto options = at::TensorOptions().dtype(ToScalarType(spec.dtype));
  if (IsFloating(spec.dtype)) t = torch::randn(spec.shape, options);
  else if (spec.dtype == DType::kBool) t = torch::ones(spec.shape, options);
  else t = torch::zeros(spec.shape, options);
  auto holder = std::make_shared<at::Tensor>(std::move(t));
  return HostTensor{spec.dtype, spec.shape, holder->data_ptr(), holder->nbytes(), holder};
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
    std::shared_ptr<TorchScriptModel> model;
    try {
      torch::jit::Module module = torch::jit::load(config.path, *device);
      module.eval();
      if (!module.find_method("forward")) return InvalidArgument(config.path + " has no forward() method");
      model = std::make_shared<TorchScriptModel>(config, std::move(module), *device);
    } catch (const c10::Error& e) {
      return InvalidArgument("cannot load TorchScript file " + config.path + ": " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      return InvalidArgument("cannot load TorchScript file " + config.path + ": " + e.what());
    }
    if (!config.warmup.inputs.empty()) {
      InferenceRequest warm;
      for (const auto& spec : config.warmup.inputs) warm.inputs.push_back(NamedTensor{spec.name, MakeWarmupTensor(spec)});
      for (int i = 0; i < config.warmup.runs; ++i) {
        auto r = model->RunOne(warm);
        if (!r.ok()) return Status(r.status().code(), "warmup of '" + config.id + "' failed: " + r.status().message());
      }
    }
    return std::shared_ptr<Model>(std::move(model));
  }

  void InitWorkerThread() override { at::set_num_threads(g_intra.load()); }
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

void ConfigureTorchThreads(const ThreadSettings& settings) {
  std::call_once(g_threads_once, [&] {
    g_intra = settings.intra_op_threads > 0 ? settings.intra_op_threads : 1;
    g_inter = settings.inter_op_threads > 0 ? settings.inter_op_threads : 1;
    g_blas = settings.blas_threads > 0 ? settings.blas_threads : HardwareThreads();
    at::set_num_threads(g_intra);
    try {
      at::set_num_interop_threads(g_inter);
    } catch (const c10::Error&) {
      // The inter-op pool was already started; its size stays.
    }
    SetBlasThreads(g_blas);
  });
}

ThreadSettings EffectiveTorchThreads() { return ThreadSettings{g_intra.load(), g_inter.load(), g_blas.load()}; }

std::string TorchBuildSummary() {
  std::ostringstream os;
  os << "libtorch " << TORCH_VERSION << ", " << BlasName() << ", CUDA "
     << (torch::cuda::is_available() ? std::to_string(torch::cuda::device_count()) + " device(s)" : "unavailable");
  return os.str();
}

std::shared_ptr<ModelLoader> MakeTorchScriptLoader() { return std::make_shared<TorchScriptLoader>(); }

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
