#include "daemon/server.h"

#include <absl/synchronization/mutex.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "common/ids.h"

namespace splitlearnd {

void ConfigureGrpcRuntime() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

Server::Server(ModelManager* manager, ServerOptions options)
    : manager_(manager), options_(std::move(options)), compute_(manager, options_.limits, options_.version) {
  compute_.set_authenticator(options_.authenticator);
}

namespace {

class NoReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const auto& p) { return p->name() == "proto_server_reflection"; }),
                   plugins->end());
  }
};

}  // namespace

std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection() { return std::make_unique<NoReflection>(); }

Server::~Server() { Shutdown(); }

Status Server::Start() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.AddListeningPort(options_.listen,
                           options_.credentials ? options_.credentials : grpc::InsecureServerCredentials(),
                           &bound_port_);
  if (options_.authenticator && options_.authenticator->compute_requires_token()) {
    builder.SetOption(WithoutReflection());
  }
  builder.RegisterService(&compute_);
  auto server = builder.BuildAndStart();
  if (!server) return Unavailable("cannot listen on " + options_.listen);
  if (options_.listen.rfind("unix:", 0) == 0) {
    bound_address_ = options_.listen;
  } else {
    if (bound_port_ == 0) return Unavailable("cannot listen on " + options_.listen);
    const auto colon = options_.listen.rfind(':');
    bound_address_ = options_.listen.substr(0, colon) + ":" + std::to_string(bound_port_);
  }
  // Model-state hooks may already be setting health from the loader thread.
  std::lock_guard<std::mutex> lock(health_mu_);
  server_ = std::move(server);
  auto* health = server_->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus("splitlearn.comm.ComputeService", false);
  for (const auto& [name, serving] : pending_health_) health->SetServingStatus(name, serving);
  return Status::Ok();
}

void Server::SetHealthLocked(const std::string& service, bool serving) {
  if (draining_) serving = false;
  pending_health_[service] = serving;
  if (server_) server_->GetHealthCheckService()->SetServingStatus(service, serving);
}

void Server::SetDaemonHealthLocked(bool serving) {
  SetHealthLocked("", serving);
  SetHealthLocked("splitlearn.comm.ComputeService", serving);
}

void Server::SetReady(bool ready) {
  std::lock_guard<std::mutex> lock(health_mu_);
  follow_models_ = true;
  SetDaemonHealthLocked(ready);
}

void Server::OnModelState(const ModelStatus& status) {
  std::lock_guard<std::mutex> lock(health_mu_);
  SetHealthLocked(ModelHealthServiceName(status.id), status.state == ModelState::kReady);
  if (!follow_models_) return;
  // After the first READY, LoadModel, UnloadModel, ReloadModel and evictions change the
  // daemon-wide status too: serving while any model serves.
  const std::string prefix = ModelHealthServiceName("");
  bool any = false;
  for (const auto& [name, serving] : pending_health_) any = any || (serving && name.rfind(prefix, 0) == 0);
  SetDaemonHealthLocked(any);
}

void Server::StopAdvertising() {
  std::lock_guard<std::mutex> lock(health_mu_);
  draining_ = true;
  for (auto& [name, serving] : pending_health_) serving = false;
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
}

void Server::BeginDrain() {
  StopAdvertising();
  compute_.gate().Close();
}

bool Server::WaitDrained(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (compute_.gate().inflight() > 0) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void Server::Shutdown() {
  std::unique_ptr<grpc::Server> server;
  {
    // Health updates from other threads find no server from here on.
    std::lock_guard<std::mutex> lock(health_mu_);
    server = std::move(server_);
  }
  if (!server) return;
  // Calls still in flight get a short grace, then are cancelled.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
}

}  // namespace splitlearnd
