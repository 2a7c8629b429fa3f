// The legacy splitlearn.comm.ComputeService over gRPC's callback API.
//
// Handlers run on gRPC's threads and only validate, decode, look the model up and
// enqueue; the device worker runs the model and finishes the call (see
// docs/threading.md). No handler blocks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "compute.grpc.pb.h"
#include "daemon/auth.h"
#include "daemon/codec.h"
#include "daemon/request_observer.h"
#include "manager/model_manager.h"

namespace splitlearnd {

// Counts calls in flight and refuses new ones once closed (a drain gate).
class CallGate {
 public:
  bool TryEnter() {
    inflight_.fetch_add(1);
    if (closed_.load()) {
      Leave();
      return false;
    }
    return true;
  }
  void Leave() { inflight_.fetch_sub(1); }
  void Close() { closed_ = true; }
  bool closed() const { return closed_.load(); }
  int64_t inflight() const { return inflight_.load(); }

 private:
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> closed_{false};
};

class ComputeServiceImpl final : public splitlearn::comm::ComputeService::CallbackService {
 public:
  ComputeServiceImpl(ModelManager* manager, Limits limits, std::string version);
  ~ComputeServiceImpl() override;

  grpc::ServerUnaryReactor* Compute(grpc::CallbackServerContext* ctx, const splitlearn::comm::ComputeRequest* req,
                                    splitlearn::comm::ComputeResponse* resp) override;
  grpc::ServerUnaryReactor* ComputeBackward(grpc::CallbackServerContext* ctx,
                                            const splitlearn::comm::BackwardRequest* req,
                                            splitlearn::comm::BackwardResponse* resp) override;
  grpc::ServerUnaryReactor* HealthCheck(grpc::CallbackServerContext* ctx, const splitlearn::comm::HealthRequest* req,
                                        splitlearn::comm::HealthResponse* resp) override;
  grpc::ServerUnaryReactor* GetServiceInfo(grpc::CallbackServerContext* ctx,
                                           const splitlearn::comm::ServiceInfoRequest* req,
                                           splitlearn::comm::ServiceInfoResponse* resp) override;
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx, const splitlearn::comm::OpenSessionRequest* req,
                                        splitlearn::comm::OpenSessionResponse* resp) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const splitlearn::comm::CloseSessionRequest* req,
                                         splitlearn::comm::CloseSessionResponse* resp) override;
  grpc::ServerUnaryReactor* SaveCheckpoint(grpc::CallbackServerContext* ctx,
                                           const splitlearn::comm::CheckpointRequest* req,
                                           splitlearn::comm::CheckpointResponse* resp) override;
  grpc::ServerBidiReactor<splitlearn::comm::ComputeRequest, splitlearn::comm::ComputeResponse>* Generate(
      grpc::CallbackServerContext* ctx) override;

  CallGate& gate() { return gate_; }
  void set_observer(RequestObserver* observer) { observer_ = observer; }
  // Before any call can arrive; null (the default): no checks.
  void set_authenticator(const Authenticator* auth) { auth_ = auth; }
  void set_extra_info(std::map<std::string, std::string> info) { extra_info_ = std::move(info); }
  uint64_t total_requests() const { return total_requests_.load(); }

 private:
  friend class DeviceCall;
  friend class GenerateCall;
  double UptimeSeconds() const;
  // Null when the call may go on; otherwise a reactor already finished with the refusal.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx);
  // OK, or why the call is refused (counted as a failed request).
  grpc::Status Authorize(grpc::CallbackServerContext* ctx);
  // Every second: lets each model expire idle sessions and old training graphs, on
  // its own device worker.
  void MaintenanceLoop();

  ModelManager* manager_;
  const Limits limits_;
  const std::string version_;
  const std::chrono::steady_clock::time_point started_;
  std::map<std::string, std::string> extra_info_;
  CallGate gate_;
  RequestObserver* observer_ = nullptr;
  const Authenticator* auth_ = nullptr;
  std::atomic<uint64_t> total_requests_{0};
  std::atomic<uint64_t> failed_requests_{0};

  std::mutex maintenance_mu_;
  std::condition_variable maintenance_cv_;
  bool stopping_ = false;
  std::thread maintenance_;
};

}  // namespace splitlearnd
