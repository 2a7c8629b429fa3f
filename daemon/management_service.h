// The management service (proto/management.proto) on its own listener.
//
// Synchronous gRPC on purpose: calls are rare, some wait for a load or a reload to
// finish, and this server's threads never touch a device queue. Nothing here runs a
// model; it only steers ModelManager and ConfigReloader.
//
// Model paths given to LoadModel are resolved with ResolveInsideRoot() before
// anything is loaded, so a path that leaves model_root loads nothing.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

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
  ManagementServiceImpl(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info);

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

 private:
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
  mutable std::mutex mu_;
  std::string management_address_;
};

class ManagementServer {
 public:
  ManagementServer(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info);
  ~ManagementServer();

  // "unix:/path" or "host:port". A Unix socket is made group-writable (0660) so
  // members of the daemon's group can use splitlearnctl.
  Status Start(const std::string& address);
  const std::string& bound_address() const { return bound_address_; }
  void Shutdown();

 private:
  ManagementServiceImpl service_;
  std::unique_ptr<grpc::Server> server_;
  std::string bound_address_;
};

}  // namespace splitlearnd
