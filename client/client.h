// A C++ client for splitlearnd's ComputeService (and any server that speaks the
// legacy split-learning protocol, docs/protocol.md).
//
//   splitlearnd::ClientOptions options;
//   options.retry.max_attempts = 5;
//   splitlearnd::Client client("127.0.0.1:50051", options);
//
//   splitlearnd::Tensor x = splitlearnd::Tensor::FromFloats({1, 10, 768}, values);
//   auto y = client.Compute("gpt2-trunk", x);          // y->tensor, y->compute_time_ms
//   if (!y.ok()) std::cerr << y.status().ToString();    // a gRPC status code and message
//
// What it offers:
//  - Compute: one forward. ComputeOptions adds the rest of the protocol: the legacy KV
//    cache (past_key_values in, present_key_values out), a server-side session
//    (session_id), a training forward (training, forward_id), further named inputs,
//    the answer's dtype, the legacy request_id.
//  - OpenSession / CloseSession: server-side KV-cache sessions; pass the session id in
//    ComputeOptions::session_id for each step.
//  - Backward: the gradient of a training forward's output in, the gradient of its
//    input out (and an optimizer step on the server where the model trains).
//  - Health / Info: the legacy HealthCheck and GetServiceInfo.
//
// Deadlines: every call has one deadline, ClientOptions::timeout from the moment the
// call starts (CallOptions::timeout overrides it per call; 0 means none). It covers
// every attempt and the waits between them.
//
// Retries: a call that fails with UNAVAILABLE (daemon restarting or draining, model
// still loading, connection refused) or RESOURCE_EXHAUSTED (device queue full,
// session budget spent) is tried again, up to RetryPolicy::max_attempts attempts in
// all, after an exponentially growing, jittered wait; never past the deadline. Every
// other status is returned at once: retrying an INVALID_ARGUMENT cannot help. Both
// retried codes normally mean the daemon did not run the request; the one exception
// is a connection that breaks while a call is in flight, after which a session step
// may have run. Set CallOptions::retry to a policy with max_attempts 1 where that
// matters.
//
// Statistics: calls, retries, failures and the summed latency (of whole calls,
// retries and waits included) since construction or ResetStats().
//
// Security: ClientOptions::tls (with tls_root_certificates for a private CA, and
// tls_cert_chain + tls_private_key for mutual TLS) and ClientOptions::token, sent as
// `authorization: Bearer <token>` with every call. LoadTlsFiles and ReadToken fill
// them from files (and SPLITLEARND_TOKEN).
//
// Thread safety: every method may be called from any number of threads at once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "compute.grpc.pb.h"

namespace splitlearnd {

// Waits between attempts: initial_backoff, then times multiplier each time, at most
// max_backoff; each wait is drawn uniformly from [w * (1 - jitter), w * (1 + jitter)]
// so that many clients retrying together spread out.
struct RetryPolicy {
  int max_attempts = 4;  // attempts in all, the first included; 1: no retries
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  double multiplier = 2.0;
  double jitter = 0.2;  // 0 to 1
};

struct ClientOptions {
  // Largest message sent or received. Split-learning clients have always set 100 MiB;
  // the daemon accepts up to server.max_message_bytes (256 MiB by default).
  int64_t max_message_bytes = 256LL * 1024 * 1024;
  // Deadline of each call, retries included; 0: none.
  std::chrono::milliseconds timeout{30000};
  // HTTP/2 keepalive pings: 0 turns them off. Keep the time above the server's
  // minimum ping interval (gRPC's default is 5 minutes without calls).
  std::chrono::milliseconds keepalive_time{0};
  std::chrono::milliseconds keepalive_timeout{20000};
  bool keepalive_without_calls = false;
  // How soon the channel tries to reconnect after losing the daemon (gRPC's defaults,
  // 1 s growing to 120 s, would make a client wait long after a daemon restart).
  std::chrono::milliseconds initial_reconnect_backoff{250};
  std::chrono::milliseconds max_reconnect_backoff{5000};
  // gRPC load-balancing policy, e.g. "round_robin" for several replicas behind one
  // DNS name; empty: gRPC's default (pick_first).
  std::string load_balancing_policy;
  RetryPolicy retry;
  // TLS: on when `tls` is set. Empty root certificates: the system's trusted roots.
  bool tls = false;
  std::string tls_root_certificates;  // PEM: the CA that signed the daemon's certificate
  std::string tls_cert_chain;         // PEM: the client's certificate (mutual TLS)
  std::string tls_private_key;        // PEM: its key
  // Sent as `authorization: Bearer <token>` with every call; empty: none.
  std::string token;
};

// Overrides for one call.
struct CallOptions {
  std::optional<std::chrono::milliseconds> timeout;  // replaces ClientOptions::timeout
  std::optional<RetryPolicy> retry;                   // replaces ClientOptions::retry
};

// An owned tensor on the client side: raw little-endian, C-contiguous bytes.
struct Tensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string data;

  int64_t elements() const;
  static Tensor FromFloats(std::vector<int64_t> shape, const std::vector<float>& values);
  // The values of a float32 tensor (empty for other dtypes).
  std::vector<float> ToFloats() const;
};

// A tensor with a name: further inputs and outputs of models with several.
struct TensorEntry {
  std::string name;
  Tensor tensor;
};

// One layer's cache entry of the legacy KV cache.
struct KVEntry {
  Tensor key;
  Tensor value;
};

struct ComputeOptions {
  std::vector<TensorEntry> extra_inputs;   // further inputs, matched to forward() by name
  std::optional<DType> output_dtype;       // unset: the input's dtype
  // Legacy KV cache: sent as past_key_values; `use_cache` asks for present_key_values.
  std::vector<KVEntry> past_key_values;
  bool use_cache = false;
  std::string session_id;                  // a server-side session from OpenSession()
  bool training = false;                   // keep the graph for Backward()
  std::string forward_id;                  // optional: names the training forward
  std::optional<int32_t> request_id;       // echoed back; shows in the daemon's debug log
  std::map<std::string, std::string> metadata;
  // > 0: float32 inputs (primary, extra and the cache) go int8 blockwise in blocks of
  // this many values (one holding NaN or infinity goes plain), and float32 outputs and
  // a returned cache come back so, each value within half a quantisation step of its
  // block (docs/protocol.md). The result's tensors are float32 as usual.
  int int8_block = 0;
};

struct ComputeResult {
  Tensor tensor;                      // the primary output
  std::vector<TensorEntry> outputs;   // every further output, by name
  std::vector<KVEntry> present_key_values;
  std::string forward_id;             // of a training forward
  std::string session_id;
  int64_t session_tokens = 0;         // sequence length cached in the session after the step
  std::optional<int32_t> request_id;
  float compute_time_ms = 0;
  float queue_time_ms = 0;
};

struct SessionInfo {
  std::string session_id;
  std::string model_id;
  double idle_timeout_s = 0;
};

struct BackwardOptions {
  std::optional<float> learning_rate;  // unset: the model's configured rate
  // Gradients of further outputs of the forward, by the names its answer gave them.
  std::vector<TensorEntry> grad_outputs;
  // > 0: float32 gradients go int8 blockwise in blocks of this many values, and a
  // float32 grad_input comes back so (as ComputeOptions::int8_block).
  int int8_block = 0;
};

struct BackwardResult {
  Tensor grad_input;
  std::string forward_id;
  float backward_time_ms = 0;
};

struct ClientStats {
  uint64_t calls = 0;     // calls made (each counts once, however many attempts)
  uint64_t retries = 0;   // attempts beyond the first
  uint64_t failures = 0;  // calls that ended with a non-OK status
  double latency_sum_s = 0;  // summed wall time of the calls
};

class Client {
 public:
  explicit Client(const std::string& target, ClientOptions options = {});
  Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  // One forward of `model_id` (empty: the daemon's default model) on `input`.
  StatusOr<ComputeResult> Compute(const std::string& model_id, const Tensor& input,
                                  std::optional<DType> output_dtype = std::nullopt);
  StatusOr<ComputeResult> Compute(const std::string& model_id, const Tensor& input, const ComputeOptions& options,
                                  const CallOptions& call = {});

  // `wanted_id` empty: the daemon picks the id.
  StatusOr<SessionInfo> OpenSession(const std::string& model_id, const std::string& wanted_id = "",
                                    const CallOptions& call = {});
  // Returns the bytes the session's cache held.
  StatusOr<int64_t> CloseSession(const std::string& model_id, const std::string& session_id,
                                 const CallOptions& call = {});

  // `grad_output`: gradient of the primary output of the training forward `forward_id`.
  StatusOr<BackwardResult> Backward(const std::string& model_id, const std::string& forward_id,
                                    const Tensor& grad_output, std::optional<float> learning_rate = std::nullopt,
                                    const CallOptions& call = {});
  StatusOr<BackwardResult> Backward(const std::string& model_id, const std::string& forward_id,
                                    const Tensor& grad_output, const BackwardOptions& options,
                                    const CallOptions& call = {});

  StatusOr<splitlearn::comm::HealthResponse> Health(const CallOptions& call = {});
  StatusOr<splitlearn::comm::ServiceInfoResponse> Info(const CallOptions& call = {});

  ClientStats Stats() const;
  void ResetStats();

  const ClientOptions& options() const { return options_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  splitlearn::comm::ComputeService::Stub& stub() { return *stub_; }

 private:
  // Runs `attempt` under the call's deadline and retry policy, and counts it.
  Status Invoke(const CallOptions& call, const std::function<grpc::Status(grpc::ClientContext*)>& attempt);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<splitlearn::comm::ComputeService::Stub> stub_;

  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> retries_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<int64_t> latency_ns_{0};
};

// Channel arguments for splitlearnd: message sizes, keepalive, reconnects, load balancing.
grpc::ChannelArguments DefaultChannelArguments(const ClientOptions& options);
// TLS credentials when options.tls, plaintext otherwise.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(const ClientOptions& options);
// Reads PEM files into `options` and turns TLS on. `ca_file` may be empty (system
// roots); `cert_file` and `key_file` go together (mutual TLS) or are both empty.
Status LoadTlsFiles(const std::string& ca_file, const std::string& cert_file, const std::string& key_file,
                    ClientOptions* options);
// The token in `path` (the whole file, surrounding whitespace dropped; an empty file is
// an error); with an empty path, the SPLITLEARND_TOKEN environment variable (empty when
// unset).
StatusOr<std::string> ReadToken(const std::string& path);
// Adds `authorization: Bearer <token>` to `ctx` (nothing for an empty token).
void AddToken(grpc::ClientContext* ctx, const std::string& token);
// The same code and message as a Status.
Status FromGrpc(const grpc::Status& s);
// True for the codes a Client retries (UNAVAILABLE, RESOURCE_EXHAUSTED).
bool IsRetryable(StatusCode code);
// The wait before attempt `attempt` + 1 (attempt >= 1), before jitter.
std::chrono::milliseconds BackoffBeforeJitter(const RetryPolicy& policy, int attempt);

}  // namespace splitlearnd
