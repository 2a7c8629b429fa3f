// Several splitlearnd replicas from one C++ client: gRPC's round_robin policy with
// client-side health checking (grpc.health.v1), and sessions pinned to one replica.
//
//   splitlearnd::BalancedChannelOptions options;
//   options.health_service = splitlearnd::ModelHealthServiceName("trunk");  // or "" (whole daemon)
//   auto channel = splitlearnd::MakeBalancedChannel({"10.0.0.5:50051", "10.0.0.6:50051"}, options);
//   splitlearnd::Client client(channel.value());          // stateless calls spread over replicas
//
//   splitlearnd::ReplicaSet replicas({"10.0.0.5:50051", "10.0.0.6:50051"});
//   auto session = replicas.OpenSession("trunk");          // opened on one healthy replica
//   auto step = (*session)->Compute(request);              // always sent to that replica
//   // step.status().code() == kUnavailable / kNotFound: that replica is gone; the
//   // message names the session and the replica.
//
// A replica whose health is not SERVING (warming up, draining after SIGTERM, or, with a
// per-model health name, not serving that model) gets no new calls from the balanced
// channel. Server-side state (a session's KV cache, a training forward awaiting its
// backward) lives in one replica only, which is why sessions do not use that channel.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/ids.h"  // ModelHealthServiceName: "splitlearn.model/<id>"
#include "common/status.h"
#include "compute.grpc.pb.h"

namespace splitlearnd {

struct BalancedChannelOptions {
  // grpc.health.v1 service a replica must report SERVING to receive calls: "" for the
  // daemon as a whole, ModelHealthServiceName(id) for one model.
  std::string health_service;
  // gRPC's own retries (service config retryPolicy) of calls that fail with UNAVAILABLE,
  // e.g. one sent to a replica the moment it stopped taking calls; gRPC sends the
  // retry to another replica. Attempts in all, the first included; 1: none.
  int max_attempts = 4;
  // Reconnect quickly to a replica that restarts (gRPC's default backoff grows to 2 min).
  std::chrono::milliseconds initial_reconnect_backoff{200};
  std::chrono::milliseconds max_reconnect_backoff{2000};
  int64_t max_message_bytes = 256LL * 1024 * 1024;
  // TLS (e.g. ChannelCredentialsFor(client_options)); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Sent as `authorization: Bearer <token>` by ReplicaSet's own calls (sessions); a
  // Client on the balanced channel sends ClientOptions::token.
  std::string token;
};

// The gRPC target for several replicas: IP literals become the multi-address form
// ("ipv4:10.0.0.5:50051,10.0.0.6:50051" or "ipv6:[::1]:1,[::1]:2"); a single host name
// becomes "dns:///name:port" (every address record is a replica, as with a Kubernetes
// headless Service); a target with a scheme already (dns:, ipv4:, ipv6:) is kept.
StatusOr<std::string> BalancedTarget(const std::vector<std::string>& endpoints);

// The service config: round_robin, healthCheckConfig and the UNAVAILABLE retry policy.
std::string BalancedServiceConfig(const BalancedChannelOptions& options);

StatusOr<std::shared_ptr<grpc::Channel>> MakeBalancedChannel(const std::vector<std::string>& endpoints,
                                                             const BalancedChannelOptions& options = {});

// grpc.health.v1.Health/Check on one channel. Returns 1 (SERVING), 2 (NOT_SERVING) or
// 3 (SERVICE_UNKNOWN: the daemon does not know the name), or the call's error.
StatusOr<int> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

class ReplicaSet;

// A server-side session and the one replica that holds it. Thread-compatible.
class PinnedSession {
 public:
  const std::string& id() const { return id_; }
  const std::string& model_id() const { return model_id_; }
  const std::string& endpoint() const { return endpoint_; }

  // One step: session_id and model_id of `request` are filled in. Never retried and
  // never sent elsewhere. UNAVAILABLE or NOT_FOUND come back with a message that names
  // the lost session and its replica.
  StatusOr<splitlearn::comm::ComputeResponse> Compute(splitlearn::comm::ComputeRequest request,
                                                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Frees the session on its replica; returns the bytes its cache held.
  StatusOr<int64_t> Close(std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  friend class ReplicaSet;
  PinnedSession(std::shared_ptr<grpc::Channel> channel, std::string endpoint, std::string id, std::string model_id,
                std::string token);
  Status Lost(const grpc::Status& s) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<splitlearn::comm::ComputeService::Stub> stub_;
  std::string endpoint_;
  std::string id_;
  std::string model_id_;
  std::string token_;
};

// Every replica of one deployment, given as host:port endpoints.
class ReplicaSet {
 public:
  explicit ReplicaSet(std::vector<std::string> endpoints, BalancedChannelOptions options = {});

  // Round-robin over the healthy replicas (null when the endpoints are invalid: see
  // BalancedTarget()).
  std::shared_ptr<grpc::Channel> balanced_channel() const { return balanced_; }
  // A plain channel to one replica.
  std::shared_ptr<grpc::Channel> EndpointChannel(const std::string& endpoint);
  // The replicas that report SERVING for `model_id` ("" = the daemon), starting at a
  // different one each call.
  std::vector<std::string> HealthyEndpoints(const std::string& model_id);
  // Opens a session on one healthy replica and pins it there.
  StatusOr<std::unique_ptr<PinnedSession>> OpenSession(const std::string& model_id, const std::string& wanted_id = "",
                                                       std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  std::vector<std::string> endpoints_;
  BalancedChannelOptions options_;
  std::shared_ptr<grpc::Channel> balanced_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  std::atomic<size_t> next_{0};
};

}  // namespace splitlearnd
