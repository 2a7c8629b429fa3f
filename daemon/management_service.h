// The management service (proto/management.proto); ManagementServer
// (management_server.h) serves it on a listener of its own.
//
// Synchronous gRPC on purpose: calls are rare, some wait for a load or a reload to
// finish, and this server's threads never touch a device queue. Nothing here runs a
// model; it only steers ModelManager and ConfigReloader.
//
// Model paths given to LoadModel are resolved with ResolveInsideRoot() before
// anything is loaded, so a path that leaves model_root loads nothing.
//
// Every call first passes Authenticator::Check for the transport it came by, which
// ManagementServer sets before it starts.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <string>

#include "daemon/auth.h"
#include "daemon/metrics.h"
#include "daemon/reloader.h"
#include "management.grpc.pb.h"
#include "manager/model_manager.h"

namespace splitlearnd {

// The management protocol's package (proto/management.proto); `pb` is the compute
// protocol's (splitlearn.comm) wherever it appears.
namespace mgmt = splitlearn::manage;

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
StatusOr<ModelConfig> ModelForLoadPath(const Config& config, const mgmt::LoadModelRequest& req);

class ManagementServiceImpl final : public mgmt::ManagementService::Service {
 public:
  ManagementServiceImpl(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info, const Authenticator* auth);

  grpc::Status ListModels(grpc::ServerContext* ctx, const mgmt::ListModelsRequest* req,
                          mgmt::ListModelsResponse* resp) override;
  grpc::Status GetModel(grpc::ServerContext* ctx, const mgmt::GetModelRequest* req,
                        mgmt::ModelInfo* resp) override;
  grpc::Status LoadModel(grpc::ServerContext* ctx, const mgmt::LoadModelRequest* req,
                         mgmt::ModelInfo* resp) override;
  grpc::Status UnloadModel(grpc::ServerContext* ctx, const mgmt::UnloadModelRequest* req,
                           mgmt::ModelInfo* resp) override;
  grpc::Status ReloadModel(grpc::ServerContext* ctx, const mgmt::ReloadModelRequest* req,
                           mgmt::ModelInfo* resp) override;
  grpc::Status ReloadConfig(grpc::ServerContext* ctx, const mgmt::ReloadConfigRequest* req,
                            mgmt::ReloadResult* resp) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const mgmt::GetStatusRequest* req,
                         mgmt::StatusResponse* resp) override;
  grpc::Status SetLogLevel(grpc::ServerContext* ctx, const mgmt::SetLogLevelRequest* req,
                           mgmt::SetLogLevelResponse* resp) override;

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
                         mgmt::ModelInfo* resp);
  void Fill(const ModelStatus& s, mgmt::ModelInfo* out) const;
  // Requests, errors, latency quantiles and sessions of every model in `models`.
  void AddTraffic(google::protobuf::RepeatedPtrField<mgmt::ModelInfo>* models) const;
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

}  // namespace splitlearnd
