#include "daemon/management_service.h"

#include <grpcpp/server_builder.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <map>
#include <cstring>
#include <filesystem>
#include <thread>

#include "daemon/logging.h"
#include "daemon/server.h"

namespace splitlearnd {
namespace pb = splitlearn::manage;

namespace {

grpc::Status Grpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

int64_t UnixMs(std::chrono::system_clock::time_point t) {
  if (t.time_since_epoch().count() <= 0) return 0;
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

pb::ModelState ToProto(ModelState s) {
  switch (s) {
    case ModelState::kLoading: return pb::LOADING;
    case ModelState::kReady: return pb::READY;
    case ModelState::kUnloading: return pb::UNLOADING;
    case ModelState::kFailed: return pb::FAILED;
    case ModelState::kUnloaded: return pb::UNLOADED;
  }
  return pb::MODEL_STATE_UNSPECIFIED;
}

void FillReport(const ReloadReport& r, pb::ReloadResult* out) {
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

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

// How long a call may wait: its deadline, capped.
std::chrono::steady_clock::time_point WaitUntil(const grpc::ServerContext* ctx, std::chrono::minutes cap) {
  const auto now = std::chrono::steady_clock::now();
  auto until = now + cap;
  const auto deadline = ctx->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const auto left = deadline - std::chrono::system_clock::now();
    until = std::min(until, now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left));
  }
  return until;
}

}  // namespace

StatusOr<ModelConfig> ModelForLoadPath(const Config& config, const pb::LoadModelRequest& req) {
  auto real = ResolveInsideRoot(config.model_root, req.path());
  if (!real.ok()) return real.status();
  ModelConfig model;
  model.id = req.id().empty() ? std::filesystem::path(req.path()).stem().string() : req.id();
  if (!ValidId(model.id)) {
    return InvalidArgument("model id '" + model.id + "' may contain only letters, digits, '-', '_' and '.'");
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

void ManagementServiceImpl::Fill(const ModelStatus& s, pb::ModelInfo* out) const {
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

grpc::Status ManagementServiceImpl::ListModels(grpc::ServerContext* ctx, const pb::ListModelsRequest*,
                                               pb::ListModelsResponse* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  for (const auto& m : manager_->ListModels()) Fill(m, resp->add_models());
  for (const auto& m : manager_->ListDraining()) Fill(m, resp->add_draining());
  AddTraffic(resp->mutable_models());
  return grpc::Status::OK;
}

void ManagementServiceImpl::AddTraffic(google::protobuf::RepeatedPtrField<pb::ModelInfo>* models) const {
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

grpc::Status ManagementServiceImpl::GetModel(grpc::ServerContext* ctx, const pb::GetModelRequest* req,
                                             pb::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto s = manager_->GetModel(req->id());
  if (!s) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model '" + req->id() + "'");
  Fill(*s, resp);
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::AwaitLoad(grpc::ServerContext* ctx, const std::string& id,
                                              const ModelStatus& before, pb::ModelInfo* resp) {
  const auto until = WaitUntil(ctx, std::chrono::minutes(30));
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
    return Grpc(Status(code, msg));
  }
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::LoadModel(grpc::ServerContext* ctx, const pb::LoadModelRequest* req,
                                              pb::ModelInfo* resp) {
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
      return Grpc(checked.status());
    }
    model = std::move(*checked);
  }
  const ModelStatus before = manager_->GetModel(model.id).value_or(ModelStatus{});
  if (auto s = manager_->Load(model, from_config); !s.ok()) return Grpc(s);
  spdlog::info("LoadModel '{}' from {} on {}", model.id, model.path, model.device);
  if (req->no_wait()) {
    if (auto s = manager_->GetModel(model.id)) Fill(*s, resp);
    return grpc::Status::OK;
  }
  return AwaitLoad(ctx, model.id, before, resp);
}

grpc::Status ManagementServiceImpl::UnloadModel(grpc::ServerContext* ctx, const pb::UnloadModelRequest* req,
                                                pb::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto before = manager_->GetModel(req->id());
  if (auto s = manager_->Unload(req->id()); !s.ok()) return Grpc(s);
  spdlog::info("UnloadModel '{}'", req->id());
  if (auto after = manager_->GetModel(req->id())) {
    Fill(*after, resp);
  } else if (before) {
    Fill(*before, resp);
    resp->set_state(pb::UNLOADING);
    resp->set_version(0);
  }
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::ReloadModel(grpc::ServerContext* ctx, const pb::ReloadModelRequest* req,
                                                pb::ModelInfo* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto before = manager_->GetModel(req->id());
  if (!before) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model '" + req->id() + "'");
  if (auto s = manager_->Reload(req->id()); !s.ok()) return Grpc(s);
  spdlog::info("ReloadModel '{}'", req->id());
  if (req->no_wait()) {
    if (auto s = manager_->GetModel(req->id())) Fill(*s, resp);
    return grpc::Status::OK;
  }
  return AwaitLoad(ctx, req->id(), *before, resp);
}

grpc::Status ManagementServiceImpl::ReloadConfig(grpc::ServerContext* ctx, const pb::ReloadConfigRequest*,
                                                 pb::ReloadResult* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  auto result = reloader_->Request("ReloadConfig");
  const auto until = WaitUntil(ctx, std::chrono::minutes(30));
  while (result.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled; the reload goes on");
    if (std::chrono::steady_clock::now() >= until) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the reload is still running; see status");
    }
  }
  FillReport(result.get(), resp);
  return grpc::Status::OK;
}

grpc::Status ManagementServiceImpl::GetStatus(grpc::ServerContext* ctx, const pb::GetStatusRequest*,
                                              pb::StatusResponse* resp) {
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

grpc::Status ManagementServiceImpl::SetLogLevel(grpc::ServerContext* ctx, const pb::SetLogLevelRequest* req,
                                                pb::SetLogLevelResponse* resp) {
  if (auto denied = Authorize(ctx); !denied.ok()) return denied;
  const auto previous = spdlog::level::to_string_view(spdlog::get_level());
  resp->set_previous(std::string(previous.data(), previous.size()));
  if (auto s = splitlearnd::SetLogLevel(req->level()); !s.ok()) return Grpc(s);
  resp->set_level(req->level());
  spdlog::warn("log level set to {} (was {}) through the management API", req->level(), resp->previous());
  return grpc::Status::OK;
}

ManagementServer::ManagementServer(ModelManager* manager, ConfigReloader* reloader, DaemonInfo info,
                                   const Authenticator* auth)
    : service_(manager, reloader, std::move(info), auth), auth_(auth) {}

ManagementServer::~ManagementServer() { Shutdown(); }

Status ManagementServer::ListenUnix(const std::string& address, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Unavailable("cannot listen on " + address + ": the path is empty or longer than " +
                       std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());  // a stale socket
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(errno));
  // Not reachable by anyone until chmod below: bind under a tight umask.
  const mode_t old_mask = umask(0177);
  const int bound = bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  umask(old_mask);
  if (bound != 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(bind_errno));
  socket_path_ = path;
  if (chmod(path.c_str(), 0660) != 0) spdlog::warn("cannot chmod {}: {}", path, std::strerror(errno));
  if (listen(listen_fd_, 64) != 0) return Unavailable("cannot listen on " + address + ": " + std::strerror(errno));
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Internal(std::string("eventfd: ") + std::strerror(errno));
  return Status::Ok();
}

Status ManagementServer::Start(const std::string& address, std::shared_ptr<grpc::ServerCredentials> tcp_credentials) {
  const bool unix_socket = address.rfind("unix:", 0) == 0;
  grpc::ServerBuilder builder;
  int port = 0;
  if (unix_socket) {
    std::string socket_path = address.substr(5);
    if (socket_path.rfind("//", 0) == 0) socket_path = socket_path.substr(2);
    const auto dir = std::filesystem::path(socket_path).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec)) {
      return Unavailable("cannot listen on " + address + ": directory " + dir.string() + " does not exist");
    }
    if (auto s = ListenUnix(address, socket_path); !s.ok()) {
      Shutdown();
      return s;
    }
    // The daemon accepts; gRPC gets only the connections of allowed peers.
    acceptor_ = builder.experimental().AddExternalConnectionAcceptor(
        grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, grpc::InsecureServerCredentials());
    service_.set_transport(Transport::kCheckedUnixPeer);
  } else {
    builder.AddListeningPort(address, tcp_credentials ? tcp_credentials : grpc::InsecureServerCredentials(), &port);
    service_.set_transport(Transport::kNetwork);
    // Reflection would answer without a token.
    if (auth_->policy()->config.management == AuthMode::kToken) {
      builder.SetOption(WithoutReflection());
    }
  }
  builder.RegisterService(&service_);
  // A few threads are plenty; LoadModel and ReloadConfig may block one each.
  grpc::ResourceQuota quota("splitlearnd-management");
  quota.SetMaxThreads(8);
  builder.SetResourceQuota(quota);
  server_ = builder.BuildAndStart();
  if (!server_) {
    Shutdown();
    return Unavailable("cannot listen on " + address);
  }
  if (unix_socket) {
    bound_address_ = address;
    accept_thread_ = std::thread([this] { AcceptLoop(); });
    spdlog::info("management socket {}: peers allowed: {}", socket_path_, auth_->policy()->unix_peers.description);
  } else {
    if (port == 0) {
      server_.reset();
      return Unavailable("cannot listen on " + address);
    }
    bound_address_ = address.substr(0, address.rfind(':')) + ":" + std::to_string(port);
  }
  service_.set_management_address(bound_address_);
  return Status::Ok();
}

void ManagementServer::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (true) {
    fds[0].revents = fds[1].revents = 0;
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("management socket: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        spdlog::warn("management socket: accept: {}", std::strerror(errno));
        poll(&fds[1], 1, 100);  // back off, but wake for shutdown
      }
      continue;  // EAGAIN, EINTR, ECONNABORTED: nothing to accept
    }
    ucred peer{};
    socklen_t len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
      spdlog::warn("management socket: refused a connection: cannot read the peer's credentials: {}",
                   std::strerror(errno));
      close(fd);
      continue;
    }
    if (!auth_->AllowsUnixPeer(peer.uid, peer.gid)) {
      // 65534: a user outside the daemon's user namespace (systemd's PrivateUsers=yes maps
      // only root and the unit's own user and group).
      spdlog::warn("management socket: refused a connection from uid {} (gid {}, pid {}): not in "
                   "server.auth.management_unix_uids nor in a group of server.auth.management_unix_groups{}",
                   peer.uid, peer.gid, peer.pid,
                   peer.uid == 65534 ? " (uid 65534: a user the daemon's user namespace does not map; see "
                                       "docs/security.md)"
                                     : "");
      close(fd);
      continue;
    }
    spdlog::debug("management socket: connection from uid {} (pid {})", peer.uid, peer.pid);
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters params;
    params.listener_fd = listen_fd_;
    params.fd = fd;  // gRPC owns it now
    acceptor_->HandleNewConnection(&params);
  }
}

void ManagementServer::Shutdown() {
  if (accept_thread_.joinable()) {
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof one) < 0) spdlog::warn("management socket: cannot wake the accept thread");
    accept_thread_.join();
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
    if (!socket_path_.empty()) unlink(socket_path_.c_str());
  }
  if (wake_fd_ >= 0) {
    close(wake_fd_);
    wake_fd_ = -1;
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
    server_.reset();
  }
  acceptor_.reset();
}

}  // namespace splitlearnd
