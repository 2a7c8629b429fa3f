#include "client/client.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "common/blockwise_int8.h"
#include "common/files.h"

namespace splitlearnd {
namespace pb = splitlearn::comm;
namespace {

using Clock = std::chrono::steady_clock;

pb::DType ToProto(DType t) { return static_cast<pb::DType>(t); }

DType FromProto(pb::DType t) {
  if (t < pb::DTYPE_FLOAT32 || t > pb::DTYPE_BOOL) return DType::kFloat32;  // unspecified: the legacy float32
  return static_cast<DType>(t);
}

// Legacy messages carry int32 dimensions.
Status ToInt32Shape(const std::vector<int64_t>& shape, google::protobuf::RepeatedField<int32_t>* out) {
  for (int64_t d : shape) {
    if (d < 0 || d > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument("dimension " + std::to_string(d) + " does not fit the protocol's int32 shape");
    }
    out->Add(static_cast<int32_t>(d));
  }
  return Status::Ok();
}

template <typename Field>
Tensor MakeTensor(pb::DType dtype, const Field& shape, std::string* data) {
  Tensor t;
  t.dtype = FromProto(dtype);
  t.shape.assign(shape.begin(), shape.end());
  t.data = std::move(*data);
  return t;
}

// Writes a float32 tensor int8 blockwise into data/q; false: it goes plain (not
// float32, no block size, or NaN/infinity among its values).
bool Int8Encode(const Tensor& t, int block, std::string* data, pb::BlockwiseInt8* q) {
  if (block <= 0 || t.dtype != DType::kFloat32) return false;
  const std::vector<float> values = t.ToFloats();
  auto enc = EncodeBlockwiseInt8(values.data(), values.size(), static_cast<size_t>(block));
  if (!enc.ok()) return false;
  data->assign(reinterpret_cast<const char*>(enc->codes.data()), enc->codes.size());
  q->set_block_size(block);
  q->mutable_scales()->Add(enc->scales.begin(), enc->scales.end());
  return true;
}

// An answer's tensor: int8 blockwise decoded to float32 when it came so.
template <typename Field>
StatusOr<Tensor> AnswerTensor(pb::DType dtype, const Field& shape, std::string* data, const pb::BlockwiseInt8* q,
                              const std::string& what) {
  if (!q) return MakeTensor(dtype, shape, data);
  Tensor t;
  t.dtype = DType::kFloat32;
  t.shape.assign(shape.begin(), shape.end());
  size_t count = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return Internal(what + ": negative dimension in the answer");
    count *= static_cast<size_t>(d);
  }
  std::vector<float> values;
  if (auto s = DecodeBlockwiseInt8(*data, q->scales().data(), static_cast<size_t>(q->scales_size()),
                                   static_cast<size_t>(std::max(0, q->block_size())), count, what, &values);
      !s.ok()) {
    return Internal("the daemon's answer is malformed: " + s.message());
  }
  t.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return t;
}

// The jittered wait before the next attempt; never negative.
std::chrono::milliseconds JitteredBackoff(const RetryPolicy& policy, int attempt) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const double base = static_cast<double>(BackoffBeforeJitter(policy, attempt).count());
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  std::uniform_real_distribution<double> factor(1.0 - jitter, 1.0 + jitter);
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(base * factor(rng))));
}

}  // namespace

// ---------------------------------------------------------------- helpers

Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return Status::Ok();
  return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
}

bool IsRetryable(StatusCode code) { return code == StatusCode::kUnavailable || code == StatusCode::kResourceExhausted; }

std::chrono::milliseconds BackoffBeforeJitter(const RetryPolicy& policy, int attempt) {
  const double initial = static_cast<double>(std::max<int64_t>(0, policy.initial_backoff.count()));
  const double cap = static_cast<double>(std::max<int64_t>(0, policy.max_backoff.count()));
  const double grown = initial * std::pow(std::max(1.0, policy.multiplier), std::max(0, attempt - 1));
  return std::chrono::milliseconds(static_cast<int64_t>(std::min(grown, cap)));
}

grpc::ChannelArguments DefaultChannelArguments(const ClientOptions& options) {
  grpc::ChannelArguments args;
  const int bytes = static_cast<int>(std::min<int64_t>(options.max_message_bytes, std::numeric_limits<int>::max()));
  args.SetMaxReceiveMessageSize(bytes);
  args.SetMaxSendMessageSize(bytes);
  if (options.keepalive_time.count() > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, options.keepalive_without_calls ? 1 : 0);
    // Without this, gRPC stops pinging after two pings with no data in between.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  if (options.initial_reconnect_backoff.count() > 0) {
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(options.initial_reconnect_backoff.count()));
  }
  if (options.max_reconnect_backoff.count() > 0) {
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(options.max_reconnect_backoff.count()));
  }
  if (!options.load_balancing_policy.empty()) args.SetLoadBalancingPolicyName(options.load_balancing_policy);
  return args;
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(const ClientOptions& options) {
  if (!options.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.tls_root_certificates;
  ssl.pem_cert_chain = options.tls_cert_chain;
  ssl.pem_private_key = options.tls_private_key;
  return grpc::SslCredentials(ssl);
}

Status LoadTlsFiles(const std::string& ca_file, const std::string& cert_file, const std::string& key_file,
                    ClientOptions* options) {
  if (cert_file.empty() != key_file.empty()) {
    return InvalidArgument("a client certificate and its key go together (--tls-cert and --tls-key)");
  }
  if (!ca_file.empty()) {
    auto ca = ReadWholeFile("TLS CA", ca_file);
    if (!ca.ok()) return ca.status();
    options->tls_root_certificates = std::move(*ca);
  }
  if (!cert_file.empty()) {
    auto cert = ReadWholeFile("TLS client certificate", cert_file);
    if (!cert.ok()) return cert.status();
    auto key = ReadWholeFile("TLS client key", key_file);
    if (!key.ok()) return key.status();
    options->tls_cert_chain = std::move(*cert);
    options->tls_private_key = std::move(*key);
  }
  options->tls = true;
  return Status::Ok();
}

StatusOr<std::string> ReadToken(const std::string& path) {
  std::string token;
  if (path.empty()) {
    const char* env = std::getenv("SPLITLEARND_TOKEN");
    token = env ? env : "";
  } else {
    auto text = ReadWholeFile("token file", path);
    if (!text.ok()) return text.status();
    token = std::move(*text);
  }
  const auto first = token.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    if (!path.empty()) return InvalidArgument("token file " + path + " is empty");
    return std::string();
  }
  token = token.substr(first, token.find_last_not_of(" \t\r\n") - first + 1);
  if (token.find_first_of(" \t\r\n") != std::string::npos) {
    return InvalidArgument(path.empty() ? "SPLITLEARND_TOKEN holds more than one word"
                                        : "token file " + path + " holds more than the token");
  }
  return token;
}

void AddToken(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

int64_t Tensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::FromFloats(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t;
  t.dtype = DType::kFloat32;
  t.shape = std::move(shape);
  t.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return t;
}

std::vector<float> Tensor::ToFloats() const {
  if (dtype != DType::kFloat32) return {};
  std::vector<float> values(data.size() / sizeof(float));
  if (!values.empty()) std::memcpy(values.data(), data.data(), values.size() * sizeof(float));
  return values;
}

// ---------------------------------------------------------------- Client

Client::Client(const std::string& target, ClientOptions options)
    : Client(grpc::CreateCustomChannel(target, ChannelCredentialsFor(options), DefaultChannelArguments(options)),
             options) {}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(std::move(options)), channel_(std::move(channel)), stub_(pb::ComputeService::NewStub(channel_)) {}

Status Client::Invoke(const CallOptions& call, const std::function<grpc::Status(grpc::ClientContext*)>& attempt) {
  const auto started = Clock::now();
  const auto timeout = call.timeout.value_or(options_.timeout);
  const RetryPolicy& policy = call.retry ? *call.retry : options_.retry;
  const auto deadline = timeout.count() > 0 ? started + timeout : Clock::time_point::max();
  const auto system_deadline = std::chrono::system_clock::now() + timeout;

  Status status;
  for (int n = 1;; ++n) {
    grpc::ClientContext ctx;
    if (timeout.count() > 0) ctx.set_deadline(system_deadline);
    AddToken(&ctx, options_.token);
    status = FromGrpc(attempt(&ctx));
    if (status.ok() || !IsRetryable(status.code()) || n >= std::max(1, policy.max_attempts)) break;
    const auto wait = JitteredBackoff(policy, n);
    if (deadline != Clock::time_point::max() && Clock::now() + wait >= deadline) break;  // no time for another try
    std::this_thread::sleep_for(wait);
    retries_.fetch_add(1, std::memory_order_relaxed);
  }
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (!status.ok()) failures_.fetch_add(1, std::memory_order_relaxed);
  latency_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started).count(),
                        std::memory_order_relaxed);
  return status;
}

StatusOr<ComputeResult> Client::Compute(const std::string& model_id, const Tensor& input,
                                        std::optional<DType> output_dtype) {
  ComputeOptions options;
  options.output_dtype = output_dtype;
  return Compute(model_id, input, options);
}

StatusOr<ComputeResult> Client::Compute(const std::string& model_id, const Tensor& input,
                                        const ComputeOptions& options, const CallOptions& call) {
  pb::ComputeRequest req;
  req.set_model_id(model_id);
  if (options.int8_block < 0) return InvalidArgument("int8_block must not be negative");
  if (!Int8Encode(input, options.int8_block, req.mutable_data(), req.mutable_data_int8_blockwise())) {
    req.clear_data_int8_blockwise();
    req.set_data(input.data);
  }
  if (auto s = ToInt32Shape(input.shape, req.mutable_shape()); !s.ok()) return s;
  // float32 stays unspecified, as a legacy client sends it.
  if (input.dtype != DType::kFloat32) req.set_dtype(ToProto(input.dtype));
  if (options.output_dtype) req.set_output_dtype(ToProto(*options.output_dtype));
  if (options.int8_block > 0) {
    req.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
    req.set_output_block_size(options.int8_block);
  }
  for (const auto& in : options.extra_inputs) {
    auto* t = req.add_inputs();
    t->set_name(in.name);
    if (!Int8Encode(in.tensor, options.int8_block, t->mutable_data(), t->mutable_int8_blockwise())) {
      t->clear_int8_blockwise();
      t->set_data(in.tensor.data);
    }
    for (int64_t d : in.tensor.shape) t->add_shape(d);
    t->set_dtype(ToProto(in.tensor.dtype));
  }
  for (const auto& kv : options.past_key_values) {
    auto* e = req.add_past_key_values();
    if (!Int8Encode(kv.key, options.int8_block, e->mutable_key_data(), e->mutable_key_int8_blockwise())) {
      e->clear_key_int8_blockwise();
      e->set_key_data(kv.key.data);
    }
    if (!Int8Encode(kv.value, options.int8_block, e->mutable_value_data(), e->mutable_value_int8_blockwise())) {
      e->clear_value_int8_blockwise();
      e->set_value_data(kv.value.data);
    }
    if (auto s = ToInt32Shape(kv.key.shape, e->mutable_key_shape()); !s.ok()) return s;
    if (auto s = ToInt32Shape(kv.value.shape, e->mutable_value_shape()); !s.ok()) return s;
    if (kv.key.dtype != kv.value.dtype) return InvalidArgument("a cache entry's key and value must share a dtype");
    if (kv.key.dtype != DType::kFloat32) e->set_dtype(ToProto(kv.key.dtype));
  }
  if (options.use_cache) req.set_use_cache(true);
  if (!options.session_id.empty()) req.set_session_id(options.session_id);
  if (options.training) req.set_training_mode(true);
  if (!options.forward_id.empty()) req.set_forward_id(options.forward_id);
  if (options.request_id) req.set_request_id(*options.request_id);
  for (const auto& [k, v] : options.metadata) (*req.mutable_metadata())[k] = v;

  pb::ComputeResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) {
    resp.Clear();
    return stub_->Compute(ctx, req, &resp);
  });
  if (!s.ok()) return s;

  ComputeResult r;
  auto primary = AnswerTensor(resp.dtype(), resp.shape(), resp.mutable_data(),
                              resp.has_data_int8_blockwise() ? &resp.data_int8_blockwise() : nullptr, "data");
  if (!primary.ok()) return primary.status();
  r.tensor = std::move(*primary);
  for (auto& out : *resp.mutable_outputs()) {
    auto t = AnswerTensor(out.dtype(), out.shape(), out.mutable_data(),
                          out.has_int8_blockwise() ? &out.int8_blockwise() : nullptr, "output '" + out.name() + "'");
    if (!t.ok()) return t.status();
    r.outputs.push_back(TensorEntry{out.name(), std::move(*t)});
  }
  for (auto& kv : *resp.mutable_present_key_values()) {
    KVEntry e;
    auto key = AnswerTensor(kv.dtype(), kv.key_shape(), kv.mutable_key_data(),
                            kv.has_key_int8_blockwise() ? &kv.key_int8_blockwise() : nullptr, "present key");
    if (!key.ok()) return key.status();
    auto value = AnswerTensor(kv.dtype(), kv.value_shape(), kv.mutable_value_data(),
                              kv.has_value_int8_blockwise() ? &kv.value_int8_blockwise() : nullptr, "present value");
    if (!value.ok()) return value.status();
    e.key = std::move(*key);
    e.value = std::move(*value);
    r.present_key_values.push_back(std::move(e));
  }
  r.forward_id = resp.forward_id();
  r.session_id = resp.session_id();
  r.session_tokens = resp.session_tokens();
  if (resp.has_request_id()) r.request_id = resp.request_id();
  r.compute_time_ms = resp.compute_time_ms();
  r.queue_time_ms = resp.queue_time_ms();
  return r;
}

StatusOr<SessionInfo> Client::OpenSession(const std::string& model_id, const std::string& wanted_id,
                                          const CallOptions& call) {
  pb::OpenSessionRequest req;
  req.set_model_id(model_id);
  req.set_session_id(wanted_id);
  pb::OpenSessionResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) { return stub_->OpenSession(ctx, req, &resp); });
  if (!s.ok()) return s;
  return SessionInfo{resp.session_id(), resp.model_id(), resp.idle_timeout_s()};
}

StatusOr<int64_t> Client::CloseSession(const std::string& model_id, const std::string& session_id,
                                       const CallOptions& call) {
  pb::CloseSessionRequest req;
  req.set_model_id(model_id);
  req.set_session_id(session_id);
  pb::CloseSessionResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) { return stub_->CloseSession(ctx, req, &resp); });
  if (!s.ok()) return s;
  return static_cast<int64_t>(resp.bytes_released());
}

StatusOr<BackwardResult> Client::Backward(const std::string& model_id, const std::string& forward_id,
                                          const Tensor& grad_output, std::optional<float> learning_rate,
                                          const CallOptions& call) {
  BackwardOptions options;
  options.learning_rate = learning_rate;
  return Backward(model_id, forward_id, grad_output, options, call);
}

StatusOr<BackwardResult> Client::Backward(const std::string& model_id, const std::string& forward_id,
                                          const Tensor& grad_output, const BackwardOptions& options,
                                          const CallOptions& call) {
  if (options.int8_block < 0) return InvalidArgument("int8_block must not be negative");
  pb::BackwardRequest req;
  if (!model_id.empty()) req.set_model_id(model_id);
  req.set_forward_id(forward_id);
  if (!Int8Encode(grad_output, options.int8_block, req.mutable_grad_output_data(),
                  req.mutable_grad_output_int8_blockwise())) {
    req.clear_grad_output_int8_blockwise();
    req.set_grad_output_data(grad_output.data);
    if (grad_output.dtype != DType::kFloat32) req.set_dtype(ToProto(grad_output.dtype));
  }
  if (auto s = ToInt32Shape(grad_output.shape, req.mutable_grad_output_shape()); !s.ok()) return s;
  for (const auto& g : options.grad_outputs) {
    auto* t = req.add_grad_outputs();
    t->set_name(g.name);
    if (!Int8Encode(g.tensor, options.int8_block, t->mutable_data(), t->mutable_int8_blockwise())) {
      t->clear_int8_blockwise();
      t->set_data(g.tensor.data);
      t->set_dtype(ToProto(g.tensor.dtype));
    }
    t->mutable_shape()->Add(g.tensor.shape.begin(), g.tensor.shape.end());
  }
  if (options.int8_block > 0) {
    req.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
    req.set_output_block_size(options.int8_block);
  }
  if (options.learning_rate) req.set_learning_rate(*options.learning_rate);
  pb::BackwardResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) {
    resp.Clear();
    return stub_->ComputeBackward(ctx, req, &resp);
  });
  if (!s.ok()) return s;
  BackwardResult r;
  auto g = AnswerTensor(resp.dtype(), resp.grad_input_shape(), resp.mutable_grad_input_data(),
                        resp.has_grad_input_int8_blockwise() ? &resp.grad_input_int8_blockwise() : nullptr,
                        "grad_input");
  if (!g.ok()) return g.status();
  r.grad_input = std::move(*g);
  r.forward_id = resp.forward_id();
  r.backward_time_ms = resp.backward_time_ms();
  return r;
}

StatusOr<pb::HealthResponse> Client::Health(const CallOptions& call) {
  pb::HealthResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) { return stub_->HealthCheck(ctx, pb::HealthRequest(), &resp); });
  if (!s.ok()) return s;
  return resp;
}

StatusOr<pb::ServiceInfoResponse> Client::Info(const CallOptions& call) {
  pb::ServiceInfoResponse resp;
  Status s = Invoke(call, [&](grpc::ClientContext* ctx) {
    return stub_->GetServiceInfo(ctx, pb::ServiceInfoRequest(), &resp);
  });
  if (!s.ok()) return s;
  return resp;
}

ClientStats Client::Stats() const {
  ClientStats s;
  s.calls = calls_.load(std::memory_order_relaxed);
  s.retries = retries_.load(std::memory_order_relaxed);
  s.failures = failures_.load(std::memory_order_relaxed);
  s.latency_sum_s = static_cast<double>(latency_ns_.load(std::memory_order_relaxed)) * 1e-9;
  return s;
}

void Client::ResetStats() {
  calls_ = 0;
  retries_ = 0;
  failures_ = 0;
  latency_ns_ = 0;
}

}  // namespace splitlearnd
