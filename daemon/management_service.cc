#include "daemon/management_service.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "common/ids.h"
#include "daemon/grpc_util.h"
#include "daemon/logging.h"
#include "manager/model_path.h"

namespace splitlearnd {
namespace {

int64_t UnixMs(std::chrono::system_clock::time_point t) {
  if (t.time_since_epoch().count() <= 0) return 0;
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

mgmt::ModelState ToProto(ModelState s) {
  switch (s) {
    case ModelState::kLoading: return mgmt::LOADING;
    case ModelState::kReady: return mgmt::READY;
    case ModelState::kUnloading: return mgmt::UNLOADING;
    case ModelState::kFailed: return mgmt::FAILED;
    case ModelState::kUnloaded: return mgmt::UNLOADED;
  }
  return mgmt::MODEL_STATE_UNSPECIFIED;
}

void FillReport(const ReloadReport& r, mgmt::ReloadResult* out) {
  out->set_ok(r.ok);
  out->set_config_valid(r.config_valid);
  out->set_message(r.message);
  out->set_trigger(r.trigger);
  out->set_time_unix_ms(UnixMs(r.time));
  out->set_config_file(r.config_file);
  out->set_seconds(r.seconds);
  for (const auto& s : r.added) out->add_added(s);
  for (const auto& s : r.changed) out->add_changed(s);
  for (const auto& s : r.removed) out->add_removed(s);
  for (const auto& s : r.updated) out->add_updated(s);
  for (const auto& s : r.failed) out->add_failed(s);
  for (const auto& s : r.warnings) out->add_warnings(s);
}

// How long a call may wait for a load or a reload: its deadline, at most 30 minutes.
std::chrono::steady_clock::time_point WaitUntil(const grpc::ServerContext& ctx) {
  return std::min(SteadyDeadline(ctx), std::chrono::steady_clock::now() + std::chrono::minutes(30));
}

}  // namespace

StatusOr<ModelConfig> ModelForLoadPath(const Config& config, const mgmt::LoadModelRequest& req) {
  auto real = ResolveInsideRoot(config.model_root, req.path());
  if (!real.ok()) return real.status();
  ModelConfig model;
  model.id = req.id().empty() ? std::filesystem::path(req.path()).stem().string() : req.id();
  if (const std::string why = IdProblem(model.id, kMaxModelIdBytes); !why.empty()) {
    return InvalidArgument("model id '" + model.id + "' " + why);
  }
  model.path = *real;
  model.device = req.device().empty() ? "cpu" : req.device();
  std::string why;
  if (!IsValidDeviceName(model.device, &why)) return InvalidArgument(why);
  if (config.FindModel(model.id)) {
    return Status(StatusCode::kAlreadyExists, "the config already has a model '" + model.id + "'; pick another id");
  }
  return model;
}

ManagementServiceImpl::ManagementServiceImpl(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info,
                                             const Authenticator* auth)
    : manager_(manager), reloader_(reloader), info_(std::move(info)), auth_(auth) {}

void ManagementServiceImpl::Fill(const ModelStatus& s, mgmt::ModelInfo* out) const {
  out->set_id(s.id);
  out->set_state(ToProto(s.state));
  out->set_device(s.device);
  out->set_path(s.path);
  out->set_version(s.version);
  out->set_last_error(s.last_error);
  out->set_parameter_bytes(s.parameter_bytes);
  out->set_load_seconds(s.load_seconds);
  out->set_sha256(s.sha256);
  out->set_from_config(s.from_config);
  out->set_is_default(s.is_default);
  out->set_load_pending(s.load_pending);
  out->set_state_since_unix_ms(UnixMs(s.state_since));
  out->set_loaded_at_unix_ms(UnixMs(s.loaded_at));
  out->set_last_used_unix_ms(UnixMs(s.last_used));
  out->set_timeout_ms(s.timeout_ms);
  out->set_max_batch_size(s.max_batch_size);
}

grpc::Status ManagementServiceImpl::ListModels(grpc::ServerContext* ctx, const mgmt::ListModelsRequest*,
                                               mgmt::ListModelsResponse* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  for (const auto& m : manager_->ListModels()) Fill(m, resp->add_models());
  for (const auto& m : manager_->ListDraining()) Fill(m, resp->add_draining());
  AddTraffic(resp->mutable_models());
  return grpc::Status::OK;
}

void ManagementServiceImpl::AddTraffic(google::protobuf::RepeatedPtrField<mgmt::ModelInfo>* models) const {
  std::map<std::string, Metrics::ModelRequests> traffic;
  if (info_.metrics) {
    for (auto& r : info_.metrics->RequestSnapshot()) traffic.emplace(r.model, std::move(r));
  }
  auto ms = [](double seconds) { return std::isnan(seconds) ? 0.0 : seconds * 1000.0; };
  for (auto& m : *models) {
    if (auto it = traffic.find(m.id()); it != traffic.end()) {
      const auto& t = it->second;
      m.set_requests(t.requests);
      m.set_errors(t.errors);
      m.set_latency_p50_ms(ms(t.total.Quantile(0.5)));
      m.set_latency_p99_ms(ms(t.total.Quantile(0.99)));
      m.set_queue_p50_ms(ms(t.queue.Quantile(0.5)));
      m.set_compute_p50_ms(ms(t.compute.Quantile(0.5)));
    }
    if (auto route = manager_->Peek(m.id()); route.ok()) {
      const ModelStats s = (*route)->model->Stats();
      m.set_sessions(s.sessions);
      m.set_session_bytes(s.session_bytes);
    }
  }
}

grpc::Status ManagementServiceImpl::GetModel(grpc::ServerContext* ctx, const mgmt::GetModelRequest* req,
                                             mgmt::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto s = manager_->GetModel(req->id());
  if (!s) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model '" + req->id() + "'");
  Fill(*s, resp);
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::AwaitLoad(grpc::ServerContext* ctx, const std::string& id,
                                              const ModelStatus& before, mgmt::ModelInfo* resp) {
  const auto until = WaitUntil(*ctx);
  while (!manager_->WaitForModel(id, std::chrono::milliseconds(200))) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled; the load goes on");
    if (std::chrono::steady_clock::now() >= until) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "model '" + id + "' is still loading");
    }
  }
  auto after = manager_->GetModel(id);
  if (!after) return grpc::Status(grpc::StatusCode::NOT_FOUND, "model '" + id + "' was removed while loading");
  Fill(*after, resp);
  const bool something_ran = after->state_since != before.state_since || after->version != before.version;
  if (after->state == ModelState::kFailed || (something_ran && !after->last_error.empty())) {
    const auto code = after->last_error_code == StatusCode::kOk ? StatusCode::kInternal : after->last_error_code;
    std::string msg = "loading '" + id + "' failed: " + after->last_error;
    if (after->state == ModelState::kReady) msg += " (version " + std::to_string(after->version) + " keeps serving)";
    return ToGrpc(Status(code, msg));
  }
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::LoadModel(grpc::ServerContext* ctx, const mgmt::LoadModelRequest* req,
                                              mgmt::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  const Config config = reloader_->current();
  ModelConfig model;
  bool from_config = false;
  if (req->path().empty()) {
    const ModelConfig* m = config.FindModel(req->id());
    if (!m) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model '" + req->id() + "' in " + config.source_path +
                                                           " (to load a file, give its path)");
    }
    model = *m;
    from_config = true;
  } else {
    auto checked = ModelForLoadPath(config, *req);
    if (!checked.ok()) {
      spdlog::warn("LoadModel refused '{}': {}", req->path(), checked.status().message());
      return ToGrpc(checked.status());
    }
    model = std::move(*checked);
  }
  const ModelStatus before = manager_->GetModel(model.id).value_or(ModelStatus{});
  if (auto s = manager_->Load(model, from_config); !s.ok()) return ToGrpc(s);
  spdlog::info("LoadModel '{}' from {} on {}", model.id, model.path, model.device);
  if (req->no_wait()) {
    if (auto s = manager_->GetModel(model.id)) Fill(*s, resp);
    return grpc::Status::OK;
  }
  return AwaitLoad(ctx, model.id, before, resp);
}

grpc::Status ManagementServiceImpl::UnloadModel(grpc::ServerContext* ctx, const mgmt::UnloadModelRequest* req,
                                                mgmt::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto before = manager_->GetModel(req->id());
  if (auto s = manager_->Unload(req->id()); !s.ok()) return ToGrpc(s);
  spdlog::info("UnloadModel '{}'", req->id());
  if (auto after = manager_->GetModel(req->id())) {
    Fill(*after, resp);
  } else if (before) {
    Fill(*before, resp);
    resp->set_state(mgmt::UNLOADING);
    resp->set_version(0);
  }
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::ReloadModel(grpc::ServerContext* ctx, const mgmt::ReloadModelRequest* req,
                                                mgmt::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto before = manager_->GetModel(req->id());
  if (!before) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model '" + req->id() + "'");
  if (auto s = manager_->Reload(req->id()); !s.ok()) return ToGrpc(s);
  spdlog::info("ReloadModel '{}'", req->id());
  if (req->no_wait()) {
    if (auto s = manager_->GetModel(req->id())) Fill(*s, resp);
    return grpc::Status::OK;
  }
  return AwaitLoad(ctx, req->id(), *before, resp);
}

grpc::Status ManagementServiceImpl::ReloadConfig(grpc::ServerContext* ctx, const mgmt::ReloadConfigRequest*,
                                                 mgmt::ReloadResult* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto result = reloader_->Request("ReloadConfig");
  const auto until = WaitUntil(*ctx);
  while (result.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled; the reload goes on");
    if (std::chrono::steady_clock::now() >= until) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the reload is still running; see status");
    }
  }
  FillReport(result.get(), resp);
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::GetStatus(grpc::ServerContext* ctx, const mgmt::GetStatusRequest*,
                                              mgmt::StatusResponse* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  const Config config = reloader_->current();
  resp->set_version(info_.version);
  resp->set_pid(static_cast<int64_t>(getpid()));
  resp->set_uptime_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - info_.started).count());
  resp->set_config_file(config.source_path);
  resp->set_config_applied_unix_ms(UnixMs(reloader_->applied_at()));
  resp->set_watch_config(info_.watching_config ? info_.watching_config() : false);
  resp->set_listen(info_.listen ? info_.listen() : config.server.listen);
  resp->set_management_listen(management_address());
  resp->set_log_level(std::string(spdlog::level::to_string_view(spdlog::get_level()).data(),
                                  spdlog::level::to_string_view(spdlog::get_level()).size()));
  resp->set_draining(info_.draining ? info_.draining() : false);
  resp->set_model_root(config.model_root);
  FillReport(reloader_->last(), resp->mutable_last_reload());
  for (const auto& m : manager_->ListModels()) Fill(m, resp->add_models());
  for (const auto& m : manager_->ListDraining()) Fill(m, resp->add_draining_versions());
  AddTraffic(resp->mutable_models());
  std::map<std::string, HistogramSnapshot> batches;
  if (info_.metrics) {
    for (auto& b : info_.metrics->BatchSnapshot()) batches.emplace(b.device, std::move(b.batch_size));
  }
  for (const auto& d : manager_->ListDevices()) {
    auto* out = resp->add_devices();
    out->set_name(d.name);
    out->set_queue_depth(d.queue_depth);
    out->set_queue_capacity(d.queue_capacity);
    out->set_worker_alive(d.worker_alive);
    out->set_requests_run(d.jobs_run);
    out->set_batches_run(d.batches_run);
    out->set_models(d.models);
    out->set_memory_used_bytes(d.memory_used_bytes);
    out->set_max_models(d.max_models);
    out->set_memory_budget_bytes(d.memory_budget_bytes);
    out->set_evict_lru(d.evict_lru);
    if (auto it = batches.find(d.name); it != batches.end() && it->second.count() > 0) {
      out->set_mean_batch_size(it->second.sum / static_cast<double>(it->second.count()));
      out->set_p99_batch_size(it->second.Quantile(0.99));
    }
  }
  resp->set_workers_alive(manager_->AllWorkersAlive());
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::SetLogLevel(grpc::ServerContext* ctx, const mgmt::SetLogLevelRequest* req,
                                                mgmt::SetLogLevelResponse* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  const auto previous = spdlog::level::to_string_view(spdlog::get_level());
  resp->set_previous(std::string(previous.data(), previous.size()));
  if (auto s = splitlearnd::SetLogLevel(req->level()); !s.ok()) return ToGrpc(s);
  resp->set_level(req->level());
  spdlog::warn("log level set to {} (was {}) through the management API", req->level(), resp->previous());
  return grpc::Status::OK;
}

}  // namespace splitlearnd
