#include "manager/model_manager.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "manager/device_limits.h"
#include "manager/model_manager_entry.h"

namespace splitlearnd {

// Lets a model's last handle report back after the model is gone, without keeping
// the manager alive or touching it after it was destroyed.
struct ModelManager::ReleaseSink {
  std::mutex mu;
  ModelManager* manager = nullptr;
};

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

ModelManager::ModelManager(std::shared_ptr<ModelLoader> loader, Hooks hooks)
    : loader_(std::move(loader)),
      hooks_(std::move(hooks)),
      loader_thread_(std::make_shared<TaskThread>()),
      release_sink_(std::make_shared<ReleaseSink>()),
      version_loader_(loader_, hooks_.file_digest,
                      [this](const std::string& device) {
                        std::lock_guard<std::mutex> lock(mu_);
                        return QueueFor(device);
                      },
                      shut_down_),
      routing_(std::make_shared<Routing>()) {
  release_sink_->manager = this;
}

ModelManager::~ModelManager() {
  Shutdown();
  std::lock_guard<std::mutex> lock(release_sink_->mu);
  release_sink_->manager = nullptr;
}

void ModelManager::SetState(Entry& e, ModelState s, std::string error, StatusCode code) {
  e.status.state = s;
  e.status.last_error_code = error.empty() ? StatusCode::kOk : code;
  e.status.last_error = std::move(error);
  e.status.state_since = std::chrono::system_clock::now();
  if (hooks_.on_state_change) hooks_.on_state_change(StatusOf(e));
}

ApplyResult ModelManager::Apply(const Config& config) {
  // stat() outside the lock; a file that changes after this is caught next time.
  std::map<std::string, FileFingerprint> fingerprints;
  for (const ModelConfig& m : config.models) fingerprints[m.id] = FingerprintFile(m.path);

  ApplyResult result;
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return result;
  server_cpus_ = config.server.cpus;
  for (const auto& [name, dev] : config.devices) device_configs_[name] = dev;
  for (auto& [name, q] : queues_) {
    if (!q) continue;
    q->SetIdleSpin(std::chrono::microseconds(DeviceSettings(name).idle_spin_us));
    q->SetCpus(WorkerCpus(name));
  }
  const ModelConfig* def = config.DefaultModel();
  default_id_ = def ? def->id : "";

  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = it->second;
    if (e.from_config && !config.FindModel(it->first)) {
      RetireLocked(e);
      SetState(e, ModelState::kUnloading);
      result.removed.push_back(it->first);
      it = entries_.erase(it);  // requests in flight keep their handles; a load in flight is discarded
    } else {
      ++it;
    }
  }

  for (const ModelConfig& m : config.models) {
    const FileFingerprint& fp = fingerprints[m.id];
    auto [it, inserted] = entries_.try_emplace(m.id);
    Entry& e = it->second;
    if (inserted) {
      e.config = m;
      e.status.id = m.id;
      SetState(e, ModelState::kLoading);
      StartLoad(e, fp);
      result.added.push_back(m.id);
      continue;
    }
    if (!e.from_config) {
      // A model loaded by path had this id; the config's model takes its place.
      e.from_config = true;
      e.config = m;
      if (!e.serving) SetState(e, ModelState::kLoading);
      StartLoad(e, fp);
      result.changed.push_back(m.id);
      continue;
    }
    const bool same = SameLoad(e.config, m);
    const FileFingerprint& known = e.load_generation != 0 ? e.pending_fingerprint : e.fingerprint;
    const bool file_changed = fp != known;
    const bool options_changed = e.config != m;
    e.config = m;
    if (e.status.state == ModelState::kUnloaded && same && !file_changed) {
      result.unchanged.push_back(m.id);  // an operator's unload (or an eviction) stands
    } else if (!same) {
      if (!e.serving) SetState(e, ModelState::kLoading);
      StartLoad(e, fp);
      result.changed.push_back(m.id);
    } else if (e.status.state == ModelState::kFailed) {
      SetState(e, ModelState::kLoading);
      StartLoad(e, fp);
      result.retried.push_back(m.id);
    } else if (file_changed) {
      if (!e.serving) SetState(e, ModelState::kLoading);
      StartLoad(e, fp, e.serving ? e.digest : "");
      result.file_changed.push_back(m.id);
    } else if (options_changed) {
      if (e.serving) {
        auto route = std::make_shared<Route>(*e.serving);
        route->config = m;
        e.serving = std::move(route);
      }
      result.updated.push_back(m.id);
    } else {
      result.unchanged.push_back(m.id);
    }
  }
  PublishLocked();
  return result;
}

Status ModelManager::Load(const ModelConfig& config, bool from_config) {
  const FileFingerprint fp = FingerprintFile(config.path);
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return Unavailable("splitlearnd is shutting down");
  auto [it, inserted] = entries_.try_emplace(config.id);
  Entry& e = it->second;
  if (inserted) {
    e.config = config;
    e.from_config = from_config;
    e.status.id = config.id;
    SetState(e, ModelState::kLoading);
    StartLoad(e, fp);
    return Status::Ok();
  }
  if (!from_config && (e.from_config || e.config.path != config.path)) {
    return Status(StatusCode::kAlreadyExists, "a model with id '" + config.id + "' already exists (from " +
                                                  e.config.path + "); unload it first or pick another id");
  }
  if (from_config) e.from_config = true;
  const bool same = SameLoad(e.config, config);
  if (same && e.serving && e.status.state == ModelState::kReady && fp == e.fingerprint) {
    e.config = config;
    return Status::Ok();  // already serving this version
  }
  if (same && e.load_generation != 0 && fp == e.pending_fingerprint) return Status::Ok();  // already loading it
  e.config = config;
  if (!e.serving) SetState(e, ModelState::kLoading);
  StartLoad(e, fp);
  return Status::Ok();
}

Status ModelManager::Unload(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return NotFound("unknown model '" + id + "'");
  Entry& e = it->second;
  if (e.status.state == ModelState::kUnloaded) return NotFound("model '" + id + "' is not loaded");
  e.load_generation = 0;  // a load in flight is discarded when it finishes
  RetireLocked(e);
  if (e.from_config) {
    SetState(e, ModelState::kUnloaded);
  } else {
    SetState(e, ModelState::kUnloading);
    entries_.erase(it);
  }
  PublishLocked();
  idle_cv_.notify_all();
  return Status::Ok();
}

Status ModelManager::Reload(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return Unavailable("splitlearnd is shutting down");
  auto it = entries_.find(id);
  if (it == entries_.end()) return NotFound("unknown model '" + id + "'");
  Entry& e = it->second;
  if (!e.serving) SetState(e, ModelState::kLoading);
  StartLoad(e, FingerprintFile(e.config.path));
  return Status::Ok();
}

void ModelManager::StartLoad(Entry& e, const FileFingerprint& fingerprint, std::string expected_digest) {
  const uint64_t generation = ++generation_;
  e.load_generation = generation;
  e.pending_fingerprint = fingerprint;
  ++pending_loads_;
  VersionLoader::Request request;
  request.config = e.config;
  request.fingerprint = fingerprint;
  request.expected_digest = std::move(expected_digest);
  // A model training on the server with a checkpoint: the new version resumes from the
  // checkpoint, so the serving version writes it first (on its worker, between its own
  // jobs), and the new version starts from what was learnt up to its load.
  if (e.serving && e.serving->config.training.enabled && !e.serving->config.training.checkpoint_path.empty() &&
      e.config.training.enabled && e.config.training.checkpoint_path == e.serving->config.training.checkpoint_path) {
    request.checkpoint_model = e.serving->model;
    request.checkpoint_queue = e.serving->queue;
  }
  loader_thread_->Post([this, generation, request = std::move(request)]() mutable {
    const std::string id = request.config.id;
    FinishLoad(id, generation, version_loader_.Load(std::move(request)));
  });
}

void ModelManager::FinishLoad(const std::string& id, uint64_t generation, VersionLoad outcome) {
  std::shared_ptr<Model> discard;  // destroyed after the lock is released
  {
    std::lock_guard<std::mutex> lock(mu_);
    --pending_loads_;
    auto it = entries_.find(id);
    const bool current = it != entries_.end() && it->second.load_generation == generation && !shut_down_;
    if (!current) {
      if (outcome.loaded.ok()) discard = std::move(outcome.loaded.value());
    } else {
      Entry& e = it->second;
      e.load_generation = 0;
      Status failure;
      if (outcome.unchanged) {
        e.fingerprint = outcome.fingerprint;  // touched, same bytes: the serving version stays
      } else if (outcome.loaded.ok()) {
        std::shared_ptr<Model> model = std::move(outcome.loaded.value());
        const int64_t bytes = model->ParameterBytes();
        failure = CheckLimitsLocked(id, e.config.device, bytes);
        if (!failure.ok()) {
          discard = std::move(model);
        } else {
          auto route = std::make_shared<Route>();
          route->version = next_version_++;
          route->model = WrapHandle(std::move(model), id, route->version);
          route->queue = QueueFor(e.config.device);
          route->config = e.config;
          route->last_used_ns = e.last_used_ns;
          RetireLocked(e);
          e.serving = std::move(route);
          e.fingerprint = outcome.fingerprint;
          e.digest = outcome.digest;
          e.status.version = e.serving->version;
          e.status.parameter_bytes = bytes;
          e.status.device = e.config.device;
          e.status.path = e.config.path;
          e.status.sha256 = outcome.digest;
          e.status.load_seconds = outcome.seconds;
          e.status.loaded_at = std::chrono::system_clock::now();
          SetState(e, ModelState::kReady);
          PublishLocked();
        }
      } else {
        failure = outcome.loaded.status();
      }
      if (!failure.ok()) {
        // A running version keeps serving; the failure is kept for status.
        SetState(e, e.serving ? ModelState::kReady : ModelState::kFailed, failure.message(), failure.code());
      }
    }
  }
  idle_cv_.notify_all();
}

Status ModelManager::CheckLimitsLocked(const std::string& id, const std::string& device, int64_t incoming) {
  std::vector<ResidentModel> residents;
  for (const auto& [other_id, e] : entries_) {
    if (other_id == id || !e.serving || e.serving->config.device != device) continue;
    // Never used since it loaded: its load time stands in, so a fresh model is not the first to go.
    const int64_t loaded = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               e.status.loaded_at.time_since_epoch()).count();
    residents.push_back(ResidentModel{other_id, e.status.parameter_bytes,
                                      std::max(loaded, e.last_used_ns->load(std::memory_order_relaxed))});
  }
  auto victims = MakeRoom(DeviceSettings(device), device, id, incoming, std::move(residents));
  if (!victims.ok()) return victims.status();
  for (const std::string& v : victims.value()) {
    Entry& e = entries_.at(v);
    RetireLocked(e);
    if (e.from_config) {
      SetState(e, ModelState::kUnloaded,
               "evicted as the least recently used model of device " + device + " to make room for '" + id + "'");
    } else {
      SetState(e, ModelState::kUnloading, "evicted to make room for '" + id + "'");
      entries_.erase(v);
    }
  }
  return Status::Ok();
}

void ModelManager::RetireLocked(Entry& e) {
  if (!e.serving) return;
  ModelStatus s = StatusOf(e);
  s.state = ModelState::kUnloading;
  s.state_since = std::chrono::system_clock::now();
  s.load_pending = false;
  draining_[e.serving->version] = s;
  e.serving.reset();  // the routing snapshot still holds it until PublishLocked()
  e.status.version = 0;
  e.status.parameter_bytes = 0;
}

void ModelManager::OnVersionReleased(const std::string& id, uint64_t version) {
  if (shut_down_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_.erase(version);
  }
  if (hooks_.on_version_released) hooks_.on_version_released(id, version);
}

const DeviceConfig& ModelManager::DeviceSettings(const std::string& device) const {
  static const DeviceConfig kDefault;
  auto it = device_configs_.find(device);
  return it == device_configs_.end() ? kDefault : it->second;
}

std::vector<int> ModelManager::WorkerCpus(const std::string& device) const {
  const DeviceConfig& d = DeviceSettings(device);
  return d.cpus.empty() ? server_cpus_ : d.cpus;
}

std::shared_ptr<DeviceQueue> ModelManager::QueueFor(const std::string& device) {
  auto& q = queues_[device];
  if (!q) {
    auto it = device_configs_.find(device);
    const int64_t capacity = it == device_configs_.end() ? DeviceConfig{}.queue_capacity : it->second.queue_capacity;
    DeviceQueue::Hooks hooks;
    hooks.init_worker = [loader = loader_] { loader->InitWorkerThread(); };
    if (hooks_.on_batch) {
      hooks.on_batch = [cb = hooks_.on_batch, device](int n) { cb(device, n); };
    }
    q = std::make_shared<DeviceQueue>(device, static_cast<size_t>(capacity), std::move(hooks));
    q->SetIdleSpin(std::chrono::microseconds(DeviceSettings(device).idle_spin_us));
    q->SetCpus(WorkerCpus(device));
  }
  return q;
}

ModelHandle ModelManager::WrapHandle(std::shared_ptr<Model> model, const std::string& id, uint64_t version) {
  // The last handle may drop on a device worker or a gRPC thread; the model itself is
  // destroyed on the loader thread so that freeing a large model never stalls either.
  Model* raw = model.get();
  std::weak_ptr<TaskThread> reaper = loader_thread_;
  std::shared_ptr<ReleaseSink> sink = release_sink_;
  return ModelHandle(raw, [owner = std::move(model), reaper, sink, id, version](const Model*) mutable {
    auto release = [m = std::move(owner), sink, id, version]() mutable {
      m.reset();
      std::lock_guard<std::mutex> lock(sink->mu);
      if (sink->manager) sink->manager->OnVersionReleased(id, version);
    };
    if (auto t = reaper.lock()) {
      t->Post(std::move(release));
    } else {
      release();
    }
  });
}

void ModelManager::PublishLocked() {
  auto routing = std::make_shared<Routing>();
  for (const auto& [id, e] : entries_) {
    if (e.serving) routing->routes.emplace(id, e.serving);
  }
  routing->default_id = default_id_;
  std::shared_ptr<const Routing> old;
  std::lock_guard<std::mutex> lock(routing_mu_);
  old = std::move(routing_);
  routing_ = std::move(routing);
}

StatusOr<std::shared_ptr<const Route>> ModelManager::Lookup(const std::string& id) const { return Find(id, true); }

StatusOr<std::shared_ptr<const Route>> ModelManager::Peek(const std::string& id) const { return Find(id, false); }

StatusOr<std::shared_ptr<const Route>> ModelManager::Find(const std::string& id, bool mark_used) const {
  std::shared_ptr<const Routing> routing;
  {
    std::lock_guard<std::mutex> lock(routing_mu_);
    routing = routing_;
  }
  const std::string& key = id.empty() ? routing->default_id : id;
  if (key.empty()) {
    return InvalidArgument("model_id is empty and no default model is configured");
  }
  auto it = routing->routes.find(key);
  if (it != routing->routes.end()) {
    if (!mark_used) return it->second;
    // Stamp the use; skip the store when a recent one is there (less cache traffic).
    const int64_t now = NowNs();
    auto& last = *it->second->last_used_ns;
    if (now - last.load(std::memory_order_relaxed) > 1000000) last.store(now, std::memory_order_relaxed);
    return it->second;
  }

  std::lock_guard<std::mutex> lock(mu_);
  auto e = entries_.find(key);
  if (e == entries_.end()) return NotFound("unknown model '" + key + "'");
  switch (e->second.status.state) {
    case ModelState::kLoading: return Unavailable("model '" + key + "' is still loading");
    case ModelState::kFailed: return Unavailable("model '" + key + "' failed to load: " + e->second.status.last_error);
    case ModelState::kUnloaded: return NotFound("model '" + key + "' is not loaded");
    default: return Unavailable("model '" + key + "' is not serving");
  }
}

bool ModelManager::WaitIdle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [this] { return pending_loads_ == 0; });
}

bool ModelManager::WaitForModel(const std::string& id, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [&] {
    auto it = entries_.find(id);
    return it == entries_.end() || it->second.load_generation == 0;
  });
}

void ModelManager::Shutdown() {
  std::map<std::string, std::shared_ptr<DeviceQueue>> queues;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    queues = queues_;
  }
  for (auto& [name, q] : queues) q->Stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    draining_.clear();
    PublishLocked();
  }
  loader_thread_->Stop();
  idle_cv_.notify_all();
}

}  // namespace splitlearnd
