// The management service (proto/management.proto) on its own listener.
//
// Synchronous gRPC on purpose: calls are rare, some wait for a load or a reload to
// finish, and this server's threads never touch a device queue. Nothing here runs a
// model; it only steers ModelManager and ConfigReloader.
//
// Model paths given to LoadModel are resolved with ResolveInsideRoot() before
// anything is loaded, so a path that leaves model_root loads nothing.
//
// Who may call (docs/security.md): on a Unix socket the daemon accepts connections
// itself and hands only those of allowed peers (SO_PEERCRED uid or group, see
// Authenticator::AllowsUnixPeer) to gRPC; a token is optional there. Over TCP every
// call needs a token with the management scope unless server.auth.management is none,
// and the listener uses the TLS credentials it is given.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "daemon/auth.h"
#include "daemon/reloader.h"
#include "management.grpc.pb.h"
#include "daemon/metrics.h"
#include "manager/model_manager.h"

namespace splitlearnd {

// What the service reports about the daemon around it.
struct DaemonInfo {
  std::string version;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::function<std::string()> listen;  // the compute service's bound address
  std::function<bool()> draining;
  std::function<bool()> watching_config;
  const Metrics* metrics = nullptr;  // traffic figures for status; may be null
};

// LoadModel with a path: checks the request (path inside model_root, id, device) and
// returns the model to load. Touches nothing but the file system; fuzzed directly.
StatusOr<ModelConfig> ModelForLoadPath(const Config& config, const splitlearn::manage::LoadModelRequest& req);

class ManagementServiceImpl final : public splitlearn::manage::ManagementService::Service {
 public:
  ManagementServiceImpl(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info, const Authenticator* auth);

  grpc::Status ListModels(grpc::ServerContext* ctx, const splitlearn::manage::ListModelsRequest* req,
                          splitlearn::manage::ListModelsResponse* resp) override;
  grpc::Status GetModel(grpc::ServerContext* ctx, const splitlearn::manage::GetModelRequest* req,
                        splitlearn::manage::ModelInfo* resp) override;
  grpc::Status LoadModel(grpc::ServerContext* ctx, const splitlearn::manage::LoadModelRequest* req,
                         splitlearn::manage::ModelInfo* resp) override;
  grpc::Status UnloadModel(grpc::ServerContext* ctx, const splitlearn::manage::UnloadModelRequest* req,
                           splitlearn::manage::ModelInfo* resp) override;
  grpc::Status ReloadModel(grpc::ServerContext* ctx, const splitlearn::manage::ReloadModelRequest* req,
                           splitlearn::manage::ModelInfo* resp) override;
  grpc::Status ReloadConfig(grpc::ServerContext* ctx, const splitlearn::manage::ReloadConfigRequest* req,
                            splitlearn::manage::ReloadResult* resp) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const splitlearn::manage::GetStatusRequest* req,
                         splitlearn::manage::StatusResponse* resp) override;
  grpc::Status SetLogLevel(grpc::ServerContext* ctx, const splitlearn::manage::SetLogLevelRequest* req,
                           splitlearn::manage::SetLogLevelResponse* resp) override;

  void set_management_address(std::string address) {
    std::lock_guard<std::mutex> lock(mu_);
    management_address_ = std::move(address);
  }
  // Before the server starts: how its calls arrive.
  void set_transport(Transport transport) { transport_ = transport; }

 private:
  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    return auth_->Check(*ctx, Scope::kManagement, transport_);
  }
  // Waits (within the call's deadline) for the load of `id` started at `since`, and
  // turns its outcome into the answer.
  grpc::Status AwaitLoad(grpc::ServerContext* ctx, const std::string& id, const ModelStatus& before,
                         splitlearn::manage::ModelInfo* resp);
  void Fill(const ModelStatus& s, splitlearn::manage::ModelInfo* out) const;
  // Requests, errors, latency quantiles and sessions of every model in `models`.
  void AddTraffic(google::protobuf::RepeatedPtrField<splitlearn::manage::ModelInfo>* models) const;
  std::string management_address() const {
    std::lock_guard<std::mutex> lock(mu_);
    return management_address_;
  }

  ModelManager* manager_;
  ConfigReloader* reloader_;
  DaemonInfo info_;
  const Authenticator* auth_;
  Transport transport_ = Transport::kNetwork;
  mutable std::mutex mu_;
  std::string management_address_;
};

class ManagementServer {
 public:
  // `auth` must outlive the server.
  ManagementServer(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info, const Authenticator* auth);
  ~ManagementServer();

  // "unix:/path" or "host:port". A Unix socket is made group-writable (0660) so
  // members of the daemon's group can use splitlearnctl; the peer check decides who
  // actually may. `tcp_credentials`: for a TCP address (null: plaintext).
  Status Start(const std::string& address, std::shared_ptr<grpc::ServerCredentials> tcp_credentials = nullptr);
  const std::string& bound_address() const { return bound_address_; }
  void Shutdown();

 private:
  Status ListenUnix(const std::string& address, const std::string& path);
  // The accept thread of a Unix socket: checks each peer, hands good ones to gRPC.
  void AcceptLoop();

  ManagementServiceImpl service_;
  const Authenticator* auth_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::string bound_address_;
  std::string socket_path_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // an eventfd: written to stop the accept thread
  std::thread accept_thread_;
};

}  // namespace splitlearnd
