#include "daemon/compute_service.h"

#include <spdlog/spdlog.h>

namespace splitlearnd {
namespace pb = splitlearn::comm;

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

namespace {

SteadyClock::time_point SteadyDeadline(const grpc::CallbackServerContext* ctx) {
  const auto deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return SteadyClock::time_point::max();
  const auto left = deadline - std::chrono::system_clock::now();
  return SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(left);
}

double Ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

// One Compute call: lives from the handler until gRPC's OnDone.
class ComputeCall final : public grpc::ServerUnaryReactor {
 public:
  ComputeCall(ComputeServiceImpl* service, grpc::CallbackServerContext* ctx, const pb::ComputeRequest* req,
              pb::ComputeResponse* resp)
      : service_(service), ctx_(ctx), req_(req), resp_(resp), cancelled_(std::make_shared<std::atomic<bool>>(false)) {}

  void Start() {
    if (!service_->gate_.TryEnter()) {
      gated_ = false;
      return Done(Unavailable("splitlearnd is draining and takes no new requests"), nullptr);
    }
    auto route = service_->manager_->Lookup(req_->model_id());
    if (!route.ok()) return Done(route.status(), nullptr);
    model_id_ = (*route)->config.id;
    if (req_->training_mode()) {
      return Done(FailedPrecondition("training is not enabled for model '" + model_id_ + "'"), nullptr);
    }
    auto decoded = DecodeCompute(*req_, service_->limits_);
    if (!decoded.ok()) return Done(decoded.status(), nullptr);

    auto job = std::make_unique<Job>();
    job->model = (*route)->model;
    job->request = std::move(decoded->request);
    job->batch_key = decoded->batch_key;
    job->rows = decoded->rows;
    job->max_batch_size = (*route)->config.batching.max_batch_size;
    job->max_delay_us = (*route)->config.batching.max_delay_us;
    job->deadline = SteadyDeadline(ctx_);
    if ((*route)->config.timeout_ms > 0) {
      job->deadline = std::min(job->deadline, SteadyClock::now() + std::chrono::milliseconds((*route)->config.timeout_ms));
    }
    deadline_ = job->deadline;
    job->cancelled = cancelled_;
    job->done = [this](StatusOr<InferenceResult> result, const JobTiming& timing) { OnJobDone(std::move(result), timing); };
    Status queued = (*route)->queue->TryEnqueue(job);
    if (!queued.ok()) return Done(queued, nullptr);  // `job` still ours; its destructor runs here
  }

  void OnCancel() override { cancelled_->store(true); }

  void OnDone() override {
    if (gated_) service_->gate_.Leave();
    delete this;
  }

 private:
  // On the device worker.
  void OnJobDone(StatusOr<InferenceResult> result, const JobTiming& timing) {
    if (!result.ok()) return Done(result.status(), &timing);
    if (timing.finished > deadline_) {
      return Done(DeadlineExceeded("the forward finished after the deadline"), &timing);
    }
    Status encoded = EncodeCompute(*result, resp_);
    if (!encoded.ok()) return Done(encoded, &timing);
    if (req_->has_request_id()) resp_->set_request_id(req_->request_id());
    resp_->set_compute_time_ms(static_cast<float>(Ms(timing.finished - timing.started)));
    resp_->set_queue_time_ms(static_cast<float>(Ms(timing.started - timing.enqueued)));
    Done(Status::Ok(), &timing);
  }

  void Done(const Status& status, const JobTiming* timing) {
    service_->total_requests_.fetch_add(1, std::memory_order_relaxed);
    if (!status.ok()) {
      service_->failed_requests_.fetch_add(1, std::memory_order_relaxed);
      SPDLOG_DEBUG("compute model={} request_id={} failed: {}", model_id_, req_->request_id(), status.ToString());
    }
    if (service_->observer_) service_->observer_->OnRequestDone(model_id_, status.code(), timing);
    Finish(ToGrpc(status));
  }

  ComputeServiceImpl* service_;
  grpc::CallbackServerContext* ctx_;
  const pb::ComputeRequest* req_;
  pb::ComputeResponse* resp_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  std::string model_id_;
  SteadyClock::time_point deadline_ = SteadyClock::time_point::max();
  bool gated_ = true;
};

ComputeServiceImpl::ComputeServiceImpl(ModelManager* manager, Limits limits, std::string version)
    : manager_(manager), limits_(limits), version_(std::move(version)), started_(std::chrono::steady_clock::now()) {}

double ComputeServiceImpl::UptimeSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

grpc::ServerUnaryReactor* ComputeServiceImpl::Compute(grpc::CallbackServerContext* ctx, const pb::ComputeRequest* req,
                                                      pb::ComputeResponse* resp) {
  auto* call = new ComputeCall(this, ctx, req, resp);
  call->Start();
  return call;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::ComputeBackward(grpc::CallbackServerContext* ctx,
                                                              const pb::BackwardRequest* req, pb::BackwardResponse*) {
  auto* reactor = ctx->DefaultReactor();
  auto route = manager_->Lookup(req->model_id());
  if (!route.ok()) {
    reactor->Finish(ToGrpc(route.status()));
  } else {
    reactor->Finish(ToGrpc(FailedPrecondition("training is not enabled for model '" + (*route)->config.id + "'")));
  }
  return reactor;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::HealthCheck(grpc::CallbackServerContext* ctx, const pb::HealthRequest*,
                                                          pb::HealthResponse* resp) {
  size_t ready = 0, total = 0;
  std::string problems;
  for (const auto& m : manager_->ListModels()) {
    ++total;
    if (m.state == ModelState::kReady) {
      ++ready;
    } else {
      problems += (problems.empty() ? "" : "; ") + m.id + " " + ModelStateName(m.state) +
                  (m.last_error.empty() ? "" : ": " + m.last_error);
    }
  }
  const bool healthy = !gate_.closed() && ready > 0;
  resp->set_status(healthy ? "healthy" : "unhealthy");
  std::string msg = gate_.closed() ? "draining; " : "";
  msg += std::to_string(ready) + "/" + std::to_string(total) + " models ready";
  if (!problems.empty()) msg += " (" + problems + ")";
  resp->set_message(msg);
  resp->set_version(version_);
  resp->set_uptime_seconds(static_cast<float>(UptimeSeconds()));
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::GetServiceInfo(grpc::CallbackServerContext* ctx,
                                                             const pb::ServiceInfoRequest*,
                                                             pb::ServiceInfoResponse* resp) {
  resp->set_service_name("splitlearnd");
  resp->set_version(version_);
  std::string devices;
  for (const auto& d : manager_->ListDevices()) devices += (devices.empty() ? "" : ",") + d.name;
  resp->set_device(devices);
  resp->set_uptime_seconds(static_cast<float>(UptimeSeconds()));
  resp->set_total_requests(static_cast<int64_t>(total_requests_.load()));
  auto& info = *resp->mutable_custom_info();
  info["failed_requests"] = std::to_string(failed_requests_.load());
  info["inflight_requests"] = std::to_string(gate_.inflight());
  std::string models;
  for (const auto& m : manager_->ListModels()) {
    models += (models.empty() ? "" : ",") + m.id;
    info["model." + m.id + ".state"] = ModelStateName(m.state);
    info["model." + m.id + ".device"] = m.device;
    info["model." + m.id + ".version"] = std::to_string(m.version);
    info["model." + m.id + ".parameter_bytes"] = std::to_string(m.parameter_bytes);
    if (!m.last_error.empty()) info["model." + m.id + ".last_error"] = m.last_error;
  }
  info["models"] = models;
  for (const auto& d : manager_->ListDevices()) {
    info["device." + d.name + ".queue_depth"] = std::to_string(d.queue_depth);
    info["device." + d.name + ".queue_capacity"] = std::to_string(d.queue_capacity);
    info["device." + d.name + ".requests_run"] = std::to_string(d.jobs_run);
    info["device." + d.name + ".batches_run"] = std::to_string(d.batches_run);
  }
  for (const auto& [k, v] : extra_info_) info[k] = v;
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace splitlearnd
