#include "daemon/compute_service.h"

#include <spdlog/spdlog.h>

#include "daemon/grpc_util.h"

namespace splitlearnd {
namespace pb = splitlearn::comm;

namespace {

double Ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Request ids for log lines: a daemon-wide serial ("s17"), plus the client's own
// legacy request_id where it sent one. Per-request lines are debug level only.
std::atomic<uint64_t> next_request_serial{1};

std::string RequestTag(uint64_t serial, const std::optional<int32_t>& client_id) {
  std::string tag = "request s" + std::to_string(serial);
  if (client_id) tag += " (client id " + std::to_string(*client_id) + ")";
  return tag;
}

}  // namespace

// A unary call served on a device worker: lives from the handler until gRPC's OnDone.
// The handler validates, looks the model up and enqueues one job; the worker runs it
// and `finish_` turns its result into the response, then the call finishes.
class DeviceCall final : public grpc::ServerUnaryReactor {
 public:
  using FinishFn = std::function<Status(const InferenceResult&, const JobTiming&)>;

  DeviceCall(ComputeServiceImpl* service, grpc::CallbackServerContext* ctx)
      : service_(service),
        ctx_(ctx),
        cancelled_(std::make_shared<std::atomic<bool>>(false)),
        serial_(next_request_serial.fetch_add(1, std::memory_order_relaxed)) {}

  void set_client_request_id(int32_t id) { client_request_id_ = id; }

  // False (and the call already finished) when the daemon is draining.
  bool Enter() {
    if (service_->gate_.TryEnter()) return true;
    gated_ = false;
    Done(Unavailable("splitlearnd is draining and takes no new requests"), nullptr);
    return false;
  }

  // Looks the model up; on failure the call is finished and null returned.
  std::shared_ptr<const splitlearnd::Route> Lookup(const std::string& model_id) {
    if (model_id.size() > service_->limits_.max_id_bytes) {
      Done(InvalidArgument("model_id is longer than " + std::to_string(service_->limits_.max_id_bytes) + " bytes"),
           nullptr);
      return nullptr;
    }
    auto route = service_->manager_->Lookup(model_id);
    if (!route.ok()) {
      Done(route.status(), nullptr);
      return nullptr;
    }
    model_id_ = (*route)->config.id;
    return std::move(route.value());
  }

  // Hands `job` to the route's device queue; `finish` fills the response on success.
  void Enqueue(const splitlearnd::Route& route, std::unique_ptr<Job> job, FinishFn finish) {
    job->model = route.model;
    job->deadline = SteadyDeadline(*ctx_);
    if (route.config.timeout_ms > 0) {
      job->deadline = std::min(job->deadline, SteadyClock::now() + std::chrono::milliseconds(route.config.timeout_ms));
    }
    deadline_ = job->deadline;
    job->cancelled = cancelled_;
    finish_ = std::move(finish);
    job->done = [this](StatusOr<InferenceResult> result, const JobTiming& timing) {
      OnJobDone(std::move(result), timing);
    };
    Status queued = route.queue->TryEnqueue(job);
    if (!queued.ok()) Done(queued, nullptr);  // `job` is still ours and goes here
  }

  void Done(const Status& status, const JobTiming* timing) {
    service_->total_requests_.fetch_add(1, std::memory_order_relaxed);
    if (!status.ok()) service_->failed_requests_.fetch_add(1, std::memory_order_relaxed);
    if (spdlog::should_log(spdlog::level::debug)) {
      spdlog::debug("{} model={}: {}{}", RequestTag(serial_, client_request_id_), model_id_.empty() ? "-" : model_id_,
                    status.ToString(),
                    timing ? fmt::format(" (queue {:.3f} ms, compute {:.3f} ms, batch of {})",
                                         Ms(timing->started - timing->enqueued), Ms(timing->finished - timing->started),
                                         timing->batch_size)
                           : "");
    }
    if (service_->observer_) service_->observer_->OnRequestDone(model_id_, status.code(), timing);
    Finish(ToGrpc(status));
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
    if (timing.finished > deadline_) return Done(DeadlineExceeded("the model finished after the deadline"), &timing);
    Done(finish_(*result, timing), &timing);
  }

  ComputeServiceImpl* service_;
  grpc::CallbackServerContext* ctx_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  FinishFn finish_;
  std::string model_id_;
  SteadyClock::time_point deadline_ = SteadyClock::time_point::max();
  bool gated_ = true;
  const uint64_t serial_;
  std::optional<int32_t> client_request_id_;
};

namespace {

// The request's share of the route's settings.
void ApplyRouteSettings(const Route& route, InferenceRequest* r) {
  r->compute_dtype = route.config.compute_dtype;
  r->session_limits = route.config.sessions;
  r->training_config = route.config.training;
}

Status FillCompute(const pb::ComputeRequest* req, pb::ComputeResponse* resp, const InferenceResult& result,
                   const JobTiming& timing, const WireCodec& codec) {
  if (auto s = EncodeCompute(result, resp, codec); !s.ok()) return s;
  if (req->has_request_id()) resp->set_request_id(req->request_id());
  resp->set_compute_time_ms(static_cast<float>(Ms(timing.finished - timing.started)));
  resp->set_queue_time_ms(static_cast<float>(Ms(timing.started - timing.enqueued)));
  return Status::Ok();
}

}  // namespace

ComputeServiceImpl::ComputeServiceImpl(ModelManager* manager, Limits limits, std::string version)
    : manager_(manager), limits_(limits), version_(std::move(version)), started_(std::chrono::steady_clock::now()) {
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
}

ComputeServiceImpl::~ComputeServiceImpl() {
  {
    std::lock_guard<std::mutex> lock(maintenance_mu_);
    stopping_ = true;
  }
  maintenance_cv_.notify_all();
  maintenance_.join();
}

grpc::Status ComputeServiceImpl::Authorize(grpc::CallbackServerContext* ctx) {
  if (!auth_) return grpc::Status::OK;
  grpc::Status s = auth_->Check(*ctx, Scope::kCompute, Transport::kNetwork);
  if (!s.ok()) {
    total_requests_.fetch_add(1, std::memory_order_relaxed);
    failed_requests_.fetch_add(1, std::memory_order_relaxed);
    if (observer_) observer_->OnRequestDone("", static_cast<StatusCode>(s.error_code()), nullptr);
  }
  return s;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::Refuse(grpc::CallbackServerContext* ctx) {
  grpc::Status s = Authorize(ctx);
  if (s.ok()) return nullptr;
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(s);
  return reactor;
}

double ComputeServiceImpl::UptimeSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

grpc::ServerUnaryReactor* ComputeServiceImpl::Compute(grpc::CallbackServerContext* ctx, const pb::ComputeRequest* req,
                                                      pb::ComputeResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
  auto* call = new DeviceCall(this, ctx);
  if (req->has_request_id()) call->set_client_request_id(req->request_id());
  if (!call->Enter()) return call;
  auto route = call->Lookup(req->model_id());
  if (!route) return call;
  if (req->training_mode() && !route->config.training.enabled) {
    call->Done(FailedPrecondition("training is not enabled for model '" + route->config.id + "'"), nullptr);
    return call;
  }
  auto decoded = DecodeCompute(*req, limits_);
  if (!decoded.ok()) {
    call->Done(decoded.status(), nullptr);
    return call;
  }
  auto job = std::make_unique<Job>();
  job->request = std::move(decoded->request);
  ApplyRouteSettings(*route, &job->request);
  job->batch_key = decoded->batch_key;
  job->rows = decoded->rows;
  job->max_batch_size = route->config.batching.max_batch_size;
  job->max_delay_us = route->config.batching.max_delay_us;
  job->fixed_wait = route->config.batching.fixed_wait;
  call->Enqueue(*route, std::move(job), [req, resp, codec = decoded->codec](const InferenceResult& r, const JobTiming& t) {
    return FillCompute(req, resp, r, t, codec);
  });
  return call;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::ComputeBackward(grpc::CallbackServerContext* ctx,
                                                              const pb::BackwardRequest* req,
                                                              pb::BackwardResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
  auto* call = new DeviceCall(this, ctx);
  if (!call->Enter()) return call;
  auto route = call->Lookup(req->model_id());
  if (!route) return call;
  if (!route->config.training.enabled) {
    call->Done(FailedPrecondition("training is not enabled for model '" + route->config.id + "'"), nullptr);
    return call;
  }
  auto decoded = DecodeBackward(*req, limits_);
  if (!decoded.ok()) {
    call->Done(decoded.status(), nullptr);
    return call;
  }
  decoded->request.training_config = route->config.training;
  const WireCodec codec = decoded->codec;
  auto job = std::make_unique<Job>();
  job->custom = [backward = std::move(decoded->request)](const Model& m) { return m.Backward(backward); };
  call->Enqueue(*route, std::move(job), [req, resp, codec](const InferenceResult& r, const JobTiming& t) {
    if (auto s = EncodeBackward(r, resp, codec); !s.ok()) return s;
    resp->set_forward_id(req->forward_id());
    resp->set_backward_time_ms(static_cast<float>(Ms(t.finished - t.started)));
    return Status::Ok();
  });
  return call;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::OpenSession(grpc::CallbackServerContext* ctx,
                                                          const pb::OpenSessionRequest* req,
                                                          pb::OpenSessionResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
  auto* call = new DeviceCall(this, ctx);
  if (!call->Enter()) return call;
  auto route = call->Lookup(req->model_id());
  if (!route) return call;
  if (req->session_id().size() > limits_.max_id_bytes) {
    call->Done(InvalidArgument("session_id is too long"), nullptr);
    return call;
  }
  auto job = std::make_unique<Job>();
  job->custom = [wanted = req->session_id(), limits = route->config.sessions](const Model& m) -> StatusOr<InferenceResult> {
    auto id = m.OpenSession(wanted, limits);
    if (!id.ok()) return id.status();
    InferenceResult r;
    r.session_id = *id;
    return r;
  };
  call->Enqueue(*route, std::move(job), [resp, id = route->config.id, idle = route->config.sessions.idle_timeout_s](
                                            const InferenceResult& r, const JobTiming&) {
    resp->set_session_id(r.session_id);
    resp->set_model_id(id);
    resp->set_idle_timeout_s(idle);
    return Status::Ok();
  });
  return call;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::CloseSession(grpc::CallbackServerContext* ctx,
                                                           const pb::CloseSessionRequest* req,
                                                           pb::CloseSessionResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
  auto* call = new DeviceCall(this, ctx);
  if (!call->Enter()) return call;
  auto route = call->Lookup(req->model_id());
  if (!route) return call;
  if (req->session_id().size() > limits_.max_id_bytes) {  // as OpenSession: never copied onto the queue
    call->Done(InvalidArgument("session_id is too long"), nullptr);
    return call;
  }
  auto job = std::make_unique<Job>();
  job->custom = [id = req->session_id()](const Model& m) -> StatusOr<InferenceResult> {
    auto bytes = m.CloseSession(id);
    if (!bytes.ok()) return bytes.status();
    InferenceResult r;
    r.session_tokens = *bytes;  // carries the bytes released
    return r;
  };
  call->Enqueue(*route, std::move(job), [resp](const InferenceResult& r, const JobTiming&) {
    resp->set_bytes_released(r.session_tokens);
    return Status::Ok();
  });
  return call;
}

grpc::ServerUnaryReactor* ComputeServiceImpl::SaveCheckpoint(grpc::CallbackServerContext* ctx,
                                                             const pb::CheckpointRequest* req,
                                                             pb::CheckpointResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
  auto* call = new DeviceCall(this, ctx);
  if (!call->Enter()) return call;
  auto route = call->Lookup(req->model_id());
  if (!route) return call;
  const std::string path = route->config.training.checkpoint_path;
  auto job = std::make_unique<Job>();
  job->custom = [path](const Model& m) -> StatusOr<InferenceResult> {
    if (auto s = m.SaveCheckpoint(path); !s.ok()) return s;
    InferenceResult r;
    r.optimizer_steps = m.Stats().optimizer_steps;
    return r;
  };
  call->Enqueue(*route, std::move(job), [resp, path](const InferenceResult& r, const JobTiming&) {
    resp->set_path(path);
    resp->set_optimizer_steps(r.optimizer_steps);
    return Status::Ok();
  });
  return call;
}

// One Generate stream: a session bound to the call, one step per message, strictly
// in order (the next message is read only after the previous answer was written).
class GenerateCall final : public grpc::ServerBidiReactor<pb::ComputeRequest, pb::ComputeResponse> {
 public:
  GenerateCall(ComputeServiceImpl* service, grpc::CallbackServerContext* ctx)
      : service_(service),
        ctx_(ctx),
        cancelled_(std::make_shared<std::atomic<bool>>(false)),
        serial_(next_request_serial.fetch_add(1, std::memory_order_relaxed)) {
    if (auto refused = service_->Authorize(ctx); !refused.ok()) {
      gated_ = false;
      Finish(refused);
      return;
    }
    if (!service_->gate_.TryEnter()) {
      gated_ = false;
      Finish(ToGrpc(Unavailable("splitlearnd is draining and takes no new requests")));
      return;
    }
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return End(Status::Ok());  // the client finished the generation
    if (!route_) {
      if (req_.model_id().size() > service_->limits_.max_id_bytes) return End(InvalidArgument("model_id is too long"));
      auto route = service_->manager_->Lookup(req_.model_id());
      if (!route.ok()) return End(route.status());
      route_ = std::move(route.value());
    } else if (!req_.model_id().empty() && req_.model_id() != route_->config.id) {
      return End(InvalidArgument("a Generate stream serves one model"));
    }
    if (req_.training_mode() || !req_.session_id().empty() || req_.past_key_values_size() > 0) {
      return End(InvalidArgument("Generate steps carry only new inputs; the stream holds the cache"));
    }
    auto decoded = DecodeCompute(req_, service_->limits_);
    if (!decoded.ok()) return End(decoded.status());
    auto job = std::make_unique<Job>();
    job->model = route_->model;
    job->request = std::move(decoded->request);
    ApplyRouteSettings(*route_, &job->request);
    job->request.use_cache = true;
    job->request.session_id = session_id_;
    job->deadline = SteadyDeadline(*ctx_);
    job->cancelled = cancelled_;
    if (session_id_.empty()) {
      // First step: open the stream's session, then run the step, in one job.
      job->custom = [request = std::move(job->request), this](const Model& m) mutable -> StatusOr<InferenceResult> {
        auto id = m.OpenSession("", request.session_limits);
        if (!id.ok()) return id.status();
        session_id_ = *id;
        request.session_id = *id;
        return m.Run({&request}).front();
      };
    }
    job->done = [this, int8_block = decoded->codec.int8_block](StatusOr<InferenceResult> result,
                                                              const JobTiming& timing) {
      service_->total_requests_.fetch_add(1, std::memory_order_relaxed);
      if (service_->observer_) service_->observer_->OnRequestDone(route_->config.id, result.status().code(), &timing);
      ++steps_;
      if (spdlog::should_log(spdlog::level::debug)) {
        spdlog::debug("{} model={} Generate step {}: {} (queue {:.3f} ms, compute {:.3f} ms)", RequestTag(serial_, {}),
                      route_->config.id, steps_, result.status().ToString(), Ms(timing.started - timing.enqueued),
                      Ms(timing.finished - timing.started));
      }
      if (!result.ok()) return End(result.status());
      resp_.Clear();
      // Generate is an extension: no zlib whatever a step's bytes were; int8 when asked.
      WireCodec codec;
      codec.int8_block = int8_block;
      if (auto s = FillCompute(&req_, &resp_, *result, timing, codec); !s.ok()) return End(s);
      StartWrite(&resp_);
    };
    Status queued = route_->queue->TryEnqueue(job);
    if (!queued.ok()) End(queued);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return End(Cancelled("the client went away"));
    StartRead(&req_);
  }

  void OnCancel() override { cancelled_->store(true); }

  void OnDone() override {
    CloseSession();
    if (gated_) service_->gate_.Leave();
    delete this;
  }

 private:
  void End(const Status& status) {
    if (!status.ok()) service_->failed_requests_.fetch_add(1, std::memory_order_relaxed);
    if (spdlog::should_log(spdlog::level::debug)) {
      spdlog::debug("{} model={} Generate stream ends after {} step(s): {}", RequestTag(serial_, {}),
                    route_ ? route_->config.id : "-", steps_, status.ToString());
    }
    Finish(ToGrpc(status));
  }

  // The session dies with the stream; closing it is one more job on the device.
  void CloseSession() {
    if (session_id_.empty() || !route_) return;
    auto job = std::make_unique<Job>();
    job->model = route_->model;
    job->custom = [id = session_id_](const Model& m) -> StatusOr<InferenceResult> {
      auto bytes = m.CloseSession(id);
      if (!bytes.ok()) return bytes.status();
      return InferenceResult{};
    };
    job->done = [](StatusOr<InferenceResult>, const JobTiming&) {};
    (void)route_->queue->TryEnqueue(job);  // a full or stopped queue: idle expiry frees it
  }

  ComputeServiceImpl* service_;
  grpc::CallbackServerContext* ctx_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  std::shared_ptr<const Route> route_;
  std::string session_id_;
  pb::ComputeRequest req_;
  pb::ComputeResponse resp_;
  bool gated_ = true;
  const uint64_t serial_;
  int64_t steps_ = 0;
};

grpc::ServerBidiReactor<pb::ComputeRequest, pb::ComputeResponse>* ComputeServiceImpl::Generate(
    grpc::CallbackServerContext* ctx) {
  return new GenerateCall(this, ctx);
}

void ComputeServiceImpl::MaintenanceLoop() {
  std::unique_lock<std::mutex> lock(maintenance_mu_);
  while (!maintenance_cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; })) {
    lock.unlock();
    for (const auto& m : manager_->ListModels()) {
      auto route = manager_->Peek(m.id);
      if (!route.ok()) continue;
      const ModelStats stats = (*route)->model->Stats();
      if (stats.sessions == 0 && stats.training_graphs == 0) continue;
      auto job = std::make_unique<Job>();
      job->model = (*route)->model;
      job->custom = [s = (*route)->config.sessions, t = (*route)->config.training](const Model& model) {
        model.Maintain(s, t);
        return StatusOr<InferenceResult>(InferenceResult{});
      };
      job->done = [](StatusOr<InferenceResult>, const JobTiming&) {};
      (void)(*route)->queue->TryEnqueue(job);  // a full queue: try again next second
    }
    lock.lock();
  }
}

grpc::ServerUnaryReactor* ComputeServiceImpl::HealthCheck(grpc::CallbackServerContext* ctx, const pb::HealthRequest*,
                                                          pb::HealthResponse* resp) {
  if (auto* refused = Refuse(ctx)) return refused;
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
  // "ok" is what the reference client's health_check() compares with; the message
  // says "healthy" or not for people (docs/protocol.md).
  resp->set_status(healthy ? "ok" : "unhealthy");
  std::string msg = healthy ? "healthy: " : "unhealthy: ";
  if (gate_.closed()) msg += "draining; ";
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
  if (auto* refused = Refuse(ctx)) return refused;
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
    if (auto route = manager_->Peek(m.id); route.ok()) {
      const ModelStats s = (*route)->model->Stats();
      info["model." + m.id + ".sessions"] = std::to_string(s.sessions);
      info["model." + m.id + ".session_bytes"] = std::to_string(s.session_bytes);
      info["model." + m.id + ".training_graphs"] = std::to_string(s.training_graphs);
      info["model." + m.id + ".optimizer_steps"] = std::to_string(s.optimizer_steps);
    }
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
