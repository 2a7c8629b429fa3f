// echo: the transport limit. A plain gRPC callback server for ComputeService whose
// Compute answers with the request's own bytes and shape, and does nothing else; the
// difference between a real server and this one is what the real server adds.
//
// Prints "listening on HOST:PORT" once it accepts calls; stops on SIGTERM or SIGINT.
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "compute.grpc.pb.h"
#include "manager/task_thread.h"

namespace {

namespace pb = splitlearn::comm;

class EchoService final : public pb::ComputeService::CallbackService {
 public:
  // worker (--handoff, diagnostic): answer each call from this one thread, the way a
  // device worker does, so that echo with and without it isolates the hand-off's cost.
  explicit EchoService(splitlearnd::TaskThread* worker) : worker_(worker) {}

  grpc::ServerUnaryReactor* Compute(grpc::CallbackServerContext* ctx, const pb::ComputeRequest* req,
                                    pb::ComputeResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto answer = [req, resp, reactor] {
      resp->set_data(req->data());  // the one copy any server makes to answer
      resp->mutable_shape()->CopyFrom(req->shape());
      if (req->has_request_id()) resp->set_request_id(req->request_id());
      reactor->Finish(grpc::Status::OK);
    };
    if (worker_) {
      worker_->Post(std::move(answer));
    } else {
      answer();
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* HealthCheck(grpc::CallbackServerContext* ctx, const pb::HealthRequest*,
                                        pb::HealthResponse* resp) override {
    resp->set_status("healthy");
    resp->set_message("echo");
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetServiceInfo(grpc::CallbackServerContext* ctx, const pb::ServiceInfoRequest*,
                                           pb::ServiceInfoResponse* resp) override {
    resp->set_service_name("echo");
    resp->set_device("none");
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  splitlearnd::TaskThread* worker_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  int max_message_bytes = 256 << 20;
  CLI::App app{"echo: ComputeService whose Compute returns the request's bytes and shape"};
  app.add_option("--listen", listen, "address to listen on (port 0: any free port)")->capture_default_str();
  app.add_option("--max-message-bytes", max_message_bytes, "largest message in either direction")->capture_default_str();
  bool handoff = false;
  app.add_flag("--handoff", handoff,
               "diagnostic: answer on one worker thread, as a device worker does, instead of on the gRPC thread");
  CLI11_PARSE(app, argc, argv);
  // As the daemon does (ConfigureGrpcRuntime): no lock-order tracking on gRPC's mutexes.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the stop signals before gRPC starts its threads; sigwait() below takes them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  std::unique_ptr<splitlearnd::TaskThread> worker;
  if (handoff) worker = std::make_unique<splitlearnd::TaskThread>();
  EchoService service(worker.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "echo: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::printf("listening on %s:%d\n", listen.substr(0, listen.rfind(':')).c_str(), port);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
  worker.reset();
  return 0;
}
