// Server: the gRPC listener with the compute service, grpc.health.v1 and reflection.
// grpc.health.v1 needs no token, so load balancers can probe it.
//
// Owned by main(). Start() binds and starts serving; health turns SERVING for the
// whole daemon only when SetReady(true) is called (models warm). Drain: BeginDrain()
// turns health NOT_SERVING and refuses new calls, WaitDrained() waits for calls in
// flight, Shutdown() stops the listener.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "daemon/compute_service.h"
#include "manager/model_manager.h"

namespace splitlearnd {

struct ServerOptions {
  std::string listen = "127.0.0.1:0";
  int64_t max_message_bytes = 256LL * 1024 * 1024;
  Limits limits;
  std::string version = "0";
  // TLS for the listener; null: plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Checks every compute call; null: none. Reflection is not served when it requires
  // a token at start (it would answer without one).
  const Authenticator* authenticator = nullptr;
};

// A ServerBuilder option that leaves gRPC's reflection service out of one server
// (InitProtoReflectionServerBuilderPlugin registers it for every server).
std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection();

// Process-wide settings of the gRPC runtime, made once at start before any gRPC
// object exists: turns off the lock-order (deadlock) tracking that the system's
// Abseil, built without NDEBUG, runs on every mutex gRPC takes.
void ConfigureGrpcRuntime();

class Server {
 public:
  Server(ModelManager* manager, ServerOptions options);
  ~Server();

  Status Start();
  // "host:port" actually bound (port resolved when 0 was asked).
  const std::string& bound_address() const { return bound_address_; }
  int bound_port() const { return bound_port_; }

  // The daemon-wide status ("" and the compute service); from the first call on it also
  // follows the models' states (serving while any model serves).
  void SetReady(bool ready);
  // Mirrors one model's state into grpc.health.v1 (any thread).
  void OnModelState(const ModelStatus& status);

  // Turns every health status NOT_SERVING for good; calls are still accepted.
  void StopAdvertising();
  // StopAdvertising(), then new calls are refused.
  void BeginDrain();
  bool WaitDrained(std::chrono::milliseconds timeout);
  void Shutdown();

  ComputeServiceImpl& compute() { return compute_; }

 private:
  void SetHealthLocked(const std::string& service, bool serving);
  void SetDaemonHealthLocked(bool serving);

  ModelManager* manager_;
  ServerOptions options_;
  ComputeServiceImpl compute_;
  std::unique_ptr<grpc::Server> server_;
  std::string bound_address_;
  int bound_port_ = 0;

  std::mutex health_mu_;
  std::map<std::string, bool> pending_health_;  // set before the server exists
  bool draining_ = false;
  bool follow_models_ = false;  // set by the first SetReady
};

}  // namespace splitlearnd
