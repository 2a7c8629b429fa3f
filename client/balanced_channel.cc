#include "client/balanced_channel.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <arpa/inet.h>

#include <algorithm>
#include <condition_variable>
#include <limits>

#include "client/client.h"

namespace splitlearnd {
namespace pb = splitlearn::comm;

namespace {

// A call's deadline, `timeout` from now, and the token when there is one.
void PrepareCall(grpc::ClientContext* ctx, std::chrono::milliseconds timeout, const std::string& token) {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  AddToken(ctx, token);
}

// host and port of "host:port" or "[v6]:port"; false when malformed.
bool SplitHostPort(const std::string& endpoint, std::string* host, std::string* port) {
  if (!endpoint.empty() && endpoint[0] == '[') {
    const auto close = endpoint.find("]:");
    if (close == std::string::npos) return false;
    *host = endpoint.substr(1, close - 1);
    *port = endpoint.substr(close + 2);
  } else {
    const auto colon = endpoint.rfind(':');
    if (colon == std::string::npos || colon == 0) return false;
    *host = endpoint.substr(0, colon);
    *port = endpoint.substr(colon + 1);
  }
  return !port->empty() && std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; });
}

int AddressFamily(const std::string& host) {
  unsigned char buf[16];
  if (inet_pton(AF_INET, host.c_str(), buf) == 1) return 4;
  if (inet_pton(AF_INET6, host.c_str(), buf) == 1) return 6;
  return 0;  // a name
}

bool HasScheme(const std::string& target) {
  for (const char* scheme : {"dns:", "ipv4:", "ipv6:", "unix:"}) {
    if (target.rfind(scheme, 0) == 0) return true;
  }
  return false;
}

std::shared_ptr<grpc::ChannelCredentials> Credentials(const BalancedChannelOptions& options) {
  return options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
}

grpc::ChannelArguments BaseArguments(const BalancedChannelOptions& options) {
  grpc::ChannelArguments args;
  const int bytes = static_cast<int>(std::min<int64_t>(options.max_message_bytes, std::numeric_limits<int>::max()));
  args.SetMaxReceiveMessageSize(bytes);
  args.SetMaxSendMessageSize(bytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(options.initial_reconnect_backoff.count()));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(options.initial_reconnect_backoff.count()));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(options.max_reconnect_backoff.count()));
  return args;
}

// grpc.health.v1 messages, encoded by hand so that no health stubs are needed:
// HealthCheckRequest {string service = 1}; HealthCheckResponse {ServingStatus status = 1}.
std::string EncodeHealthRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;
  out.push_back('\x0a');
  for (size_t n = service.size();;) {
    const unsigned char byte = n & 0x7f;
    n >>= 7;
    out.push_back(static_cast<char>(byte | (n ? 0x80 : 0)));
    if (!n) break;
  }
  return out + service;
}

int DecodeHealthResponse(const std::string& data) {
  int status = 0;
  for (size_t i = 0; i < data.size();) {
    const unsigned char key = static_cast<unsigned char>(data[i++]);
    if ((key & 7) != 0) break;  // only varints are expected
    uint64_t value = 0;
    for (int shift = 0; i < data.size() && shift < 64; shift += 7) {
      const unsigned char b = static_cast<unsigned char>(data[i++]);
      value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    if ((key >> 3) == 1) status = static_cast<int>(value);
  }
  return status;
}

}  // namespace

StatusOr<std::string> BalancedTarget(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return InvalidArgument("no endpoints");
  if (endpoints.size() == 1 && HasScheme(endpoints[0])) return endpoints[0];
  int family = -1;
  for (const auto& e : endpoints) {
    std::string host, port;
    if (!SplitHostPort(e, &host, &port)) return InvalidArgument("endpoint '" + e + "': expected host:port");
    const int f = AddressFamily(host);
    if (family != -1 && f != family) {
      return InvalidArgument("endpoints mix IPv4, IPv6 and host names; give IP addresses of one family, or one DNS name");
    }
    family = f;
  }
  if (family == 0) {
    if (endpoints.size() != 1) {
      return InvalidArgument("give one DNS name (each of its addresses is a replica) or a list of IP addresses");
    }
    return "dns:///" + endpoints[0];
  }
  std::string target = family == 4 ? "ipv4:" : "ipv6:";
  for (size_t i = 0; i < endpoints.size(); ++i) target += (i ? "," : "") + endpoints[i];
  return target;
}

std::string BalancedServiceConfig(const BalancedChannelOptions& options) {
  std::string escaped;
  for (char c : options.health_service) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    escaped.push_back(c);
  }
  std::string config = R"({"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":")" +
                       escaped + "\"}";
  if (options.max_attempts > 1) {
    config += R"(,"methodConfig":[{"name":[{"service":"splitlearn.comm.ComputeService"}],"retryPolicy":{"maxAttempts":)" +
              std::to_string(std::min(options.max_attempts, 5)) +
              R"(,"initialBackoff":"0.05s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}])";
  }
  return config + "}";
}

StatusOr<std::shared_ptr<grpc::Channel>> MakeBalancedChannel(const std::vector<std::string>& endpoints,
                                                             const BalancedChannelOptions& options) {
  auto target = BalancedTarget(endpoints);
  if (!target.ok()) return target.status();
  grpc::ChannelArguments args = BaseArguments(options);
  args.SetServiceConfigJSON(BalancedServiceConfig(options));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.max_attempts > 1 ? 1 : 0);
  return grpc::CreateCustomChannel(*target, Credentials(options), args);
}

StatusOr<int> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                          std::chrono::milliseconds timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);  // grpc.health.v1 needs no token
  const std::string request = EncodeHealthRequest(service);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer, &response_buffer,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_all();
                 });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return 3;  // SERVICE_UNKNOWN
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) return Internal("unreadable health response");
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return DecodeHealthResponse(bytes);
}

// ---------------------------------------------------------------- PinnedSession

PinnedSession::PinnedSession(std::shared_ptr<grpc::Channel> channel, std::string endpoint, std::string id,
                             std::string model_id, std::string token)
    : channel_(std::move(channel)),
      stub_(pb::ComputeService::NewStub(channel_)),
      endpoint_(std::move(endpoint)),
      id_(std::move(id)),
      model_id_(std::move(model_id)),
      token_(std::move(token)) {}

Status PinnedSession::Lost(const grpc::Status& s) const {
  const auto code = s.error_code();
  if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::NOT_FOUND) return FromGrpc(s);
  const std::string why = code == grpc::StatusCode::NOT_FOUND
                              ? "which no longer knows it (the replica restarted, or the session expired or was closed)"
                              : "which is gone, draining or unreachable";
  return Status(static_cast<StatusCode>(code), "session '" + id_ + "' of model '" + model_id_ +
                                                   "' is lost: it lived on replica " + endpoint_ + ", " + why + " (" +
                                                   s.error_message() +
                                                   "); its KV cache cannot be recovered elsewhere, open a new session");
}

StatusOr<pb::ComputeResponse> PinnedSession::Compute(pb::ComputeRequest request, std::chrono::milliseconds timeout) {
  request.set_session_id(id_);
  request.set_model_id(model_id_);
  grpc::ClientContext ctx;
  PrepareCall(&ctx, timeout, token_);
  pb::ComputeResponse response;
  const grpc::Status s = stub_->Compute(&ctx, request, &response);
  if (!s.ok()) return Lost(s);
  return response;
}

StatusOr<int64_t> PinnedSession::Close(std::chrono::milliseconds timeout) {
  pb::CloseSessionRequest request;
  request.set_session_id(id_);
  request.set_model_id(model_id_);
  grpc::ClientContext ctx;
  PrepareCall(&ctx, timeout, token_);
  pb::CloseSessionResponse response;
  const grpc::Status s = stub_->CloseSession(&ctx, request, &response);
  if (!s.ok()) return Lost(s);
  return response.bytes_released();
}

// ---------------------------------------------------------------- ReplicaSet

ReplicaSet::ReplicaSet(std::vector<std::string> endpoints, BalancedChannelOptions options)
    : endpoints_(std::move(endpoints)), options_(std::move(options)) {
  auto channel = MakeBalancedChannel(endpoints_, options_);
  if (channel.ok()) balanced_ = std::move(channel.value());
}

std::shared_ptr<grpc::Channel> ReplicaSet::EndpointChannel(const std::string& endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& channel = channels_[endpoint];
  if (!channel) channel = grpc::CreateCustomChannel(endpoint, Credentials(options_), BaseArguments(options_));
  return channel;
}

std::vector<std::string> ReplicaSet::HealthyEndpoints(const std::string& model_id) {
  std::vector<std::string> healthy;
  if (endpoints_.empty()) return healthy;
  const std::string service = model_id.empty() ? "" : ModelHealthServiceName(model_id);
  const size_t start = next_.fetch_add(1) % endpoints_.size();
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    const std::string& endpoint = endpoints_[(start + i) % endpoints_.size()];
    auto status = CheckHealth(EndpointChannel(endpoint), service);
    if (status.ok() && *status == 1) healthy.push_back(endpoint);
  }
  return healthy;
}

StatusOr<std::unique_ptr<PinnedSession>> ReplicaSet::OpenSession(const std::string& model_id,
                                                                 const std::string& wanted_id,
                                                                 std::chrono::milliseconds timeout) {
  std::string refused;
  for (const auto& endpoint : HealthyEndpoints(model_id)) {
    auto channel = EndpointChannel(endpoint);
    auto stub = pb::ComputeService::NewStub(channel);
    pb::OpenSessionRequest request;
    request.set_model_id(model_id);
    request.set_session_id(wanted_id);
    grpc::ClientContext ctx;
    PrepareCall(&ctx, timeout, options_.token);
    pb::OpenSessionResponse response;
    const grpc::Status s = stub->OpenSession(&ctx, request, &response);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {  // nothing was opened there; try another
      refused += (refused.empty() ? "" : "; ") + endpoint + ": " + s.error_message();
      continue;
    }
    if (!s.ok()) return FromGrpc(s);
    return std::unique_ptr<PinnedSession>(new PinnedSession(
        std::move(channel), endpoint, response.session_id(), response.model_id().empty() ? model_id : response.model_id(),
        options_.token));
  }
  std::string all;
  for (const auto& e : endpoints_) all += (all.empty() ? "" : ", ") + e;
  return Unavailable("no replica can open a session of model '" + model_id + "': none of " + all + " is SERVING it" +
                     (refused.empty() ? "" : " (" + refused + ")"));
}

}  // namespace splitlearnd
