#include "manager/model_manager.h"

namespace splitlearnd {

const char* ModelStateName(ModelState s) {
  switch (s) {
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kUnloading: return "UNLOADING";
    case ModelState::kFailed: return "FAILED";
  }
  return "?";
}

struct ModelManager::Entry {
  ModelConfig config;                     // the desired config
  std::shared_ptr<const Route> serving;  // the version requests go to; null when none
  ModelStatus status;
  uint64_t load_generation = 0;  // generation of the load in flight (0: none)
};

namespace {

// Options a running model takes without a reload.
bool SameLoad(const ModelConfig& a, const ModelConfig& b) {
  auto spec_eq = [](const TensorSpec& x, const TensorSpec& y) {
    return x.name == y.name && x.shape == y.shape && x.dtype == y.dtype;
  };
  if (a.path != b.path || a.device != b.device || a.sha256 != b.sha256 || a.warmup.runs != b.warmup.runs ||
      a.warmup.inputs.size() != b.warmup.inputs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.warmup.inputs.size(); ++i) {
    if (!spec_eq(a.warmup.inputs[i], b.warmup.inputs[i])) return false;
  }
  return true;
}

}  // namespace

ModelManager::ModelManager(std::shared_ptr<ModelLoader> loader, Hooks hooks)
    : loader_(std::move(loader)),
      hooks_(std::move(hooks)),
      loader_thread_(std::make_shared<TaskThread>()),
      routing_(std::make_shared<Routing>()) {}

ModelManager::~ModelManager() { Shutdown(); }

void ModelManager::SetState(Entry& e, ModelState s, std::string error) {
  e.status.state = s;
  e.status.last_error = std::move(error);
  e.status.state_since = std::chrono::system_clock::now();
  if (hooks_.on_state_change) hooks_.on_state_change(e.status);
}

void ModelManager::Apply(const Config& config) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return;
  const uint64_t generation = ++generation_;
  for (const auto& [name, dev] : config.devices) device_configs_[name] = dev;
  const ModelConfig* def = config.DefaultModel();
  default_id_ = def ? def->id : "";

  for (auto it = entries_.begin(); it != entries_.end();) {
    if (!config.FindModel(it->first)) {
      SetState(it->second, ModelState::kUnloading, "");
      it = entries_.erase(it);  // requests in flight keep their handles
    } else {
      ++it;
    }
  }

  for (const ModelConfig& m : config.models) {
    auto [it, inserted] = entries_.try_emplace(m.id);
    Entry& e = it->second;
    if (inserted) {
      e.config = m;
      e.status.id = m.id;
      e.status.device = m.device;
      e.status.path = m.path;
      SetState(e, ModelState::kLoading, "");
      StartLoad(m, generation);
      continue;
    }
    const bool reload = !SameLoad(e.config, m) || (e.status.state == ModelState::kFailed);
    e.config = m;
    if (reload) {
      if (!e.serving) SetState(e, ModelState::kLoading, "");
      StartLoad(m, generation);
    } else if (e.serving && e.serving->config != m) {
      // Options that apply in place: same model, new route.
      auto route = std::make_shared<Route>(*e.serving);
      route->config = m;
      e.serving = std::move(route);
    }
  }
  PublishLocked();
}

void ModelManager::StartLoad(const ModelConfig& config, uint64_t generation) {
  entries_[config.id].load_generation = generation;
  ++pending_loads_;
  loader_thread_->Post([this, config, generation] {
    const auto t0 = SteadyClock::now();
    StatusOr<std::shared_ptr<Model>> loaded = loader_->Load(config);
    const double seconds = std::chrono::duration<double>(SteadyClock::now() - t0).count();
    FinishLoad(config, generation, std::move(loaded), seconds);
  });
}

void ModelManager::FinishLoad(const ModelConfig& config, uint64_t generation, StatusOr<std::shared_ptr<Model>> loaded,
                              double seconds) {
  std::shared_ptr<Model> discard;  // destroyed after the lock is released
  {
    std::lock_guard<std::mutex> lock(mu_);
    --pending_loads_;
    auto it = entries_.find(config.id);
    const bool current = it != entries_.end() && it->second.load_generation == generation && !shut_down_;
    if (!current) {
      if (loaded.ok()) discard = std::move(loaded.value());
    } else {
      Entry& e = it->second;
      e.load_generation = 0;
      if (loaded.ok()) {
        auto route = std::make_shared<Route>();
        route->model = WrapHandle(std::move(loaded.value()));
        route->queue = QueueFor(device_configs_[config.device].name.empty() ? DeviceConfig{config.device}
                                                                             : device_configs_[config.device]);
        route->config = e.config;
        route->version = next_version_++;
        e.status.version = route->version;
        e.status.parameter_bytes = route->model->ParameterBytes();
        e.status.device = config.device;
        e.status.path = config.path;
        e.status.load_seconds = seconds;
        e.serving = std::move(route);
        SetState(e, ModelState::kReady, "");
        PublishLocked();
      } else if (e.serving) {
        // The running version keeps serving; the failure is kept for status.
        SetState(e, ModelState::kReady, loaded.status().message());
      } else {
        SetState(e, ModelState::kFailed, loaded.status().message());
      }
    }
  }
  idle_cv_.notify_all();
}

std::shared_ptr<DeviceQueue> ModelManager::QueueFor(const DeviceConfig& device) {
  auto& q = queues_[device.name];
  if (!q) {
    DeviceQueue::Hooks hooks;
    hooks.init_worker = [loader = loader_] { loader->InitWorkerThread(); };
    if (hooks_.on_batch) {
      hooks.on_batch = [cb = hooks_.on_batch, name = device.name](int n) { cb(name, n); };
    }
    q = std::make_shared<DeviceQueue>(device.name, static_cast<size_t>(device.queue_capacity), std::move(hooks));
  }
  return q;
}

ModelHandle ModelManager::WrapHandle(std::shared_ptr<Model> model) {
  // The last handle may drop on a device worker; the model itself is destroyed on the
  // loader thread so that freeing a large model never stalls a device.
  Model* raw = model.get();
  std::weak_ptr<TaskThread> reaper = loader_thread_;
  return ModelHandle(raw, [owner = std::move(model), reaper](const Model*) mutable {
    if (auto t = reaper.lock()) {
      t->Post([m = std::move(owner)]() mutable { m.reset(); });
    } else {
      owner.reset();
    }
  });
}

void ModelManager::PublishLocked() {
  auto routing = std::make_shared<Routing>();
  for (const auto& [id, e] : entries_) {
    if (e.serving) routing->routes.emplace(id, e.serving);
  }
  routing->default_id = default_id_;
  std::lock_guard<std::mutex> lock(routing_mu_);
  routing_ = std::move(routing);
}

StatusOr<std::shared_ptr<const Route>> ModelManager::Lookup(const std::string& id) const {
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
  if (it != routing->routes.end()) return it->second;

  std::lock_guard<std::mutex> lock(mu_);
  auto e = entries_.find(key);
  if (e == entries_.end()) return NotFound("unknown model '" + key + "'");
  switch (e->second.status.state) {
    case ModelState::kLoading: return Unavailable("model '" + key + "' is still loading");
    case ModelState::kFailed: return Unavailable("model '" + key + "' failed to load: " + e->second.status.last_error);
    default: return Unavailable("model '" + key + "' is not serving");
  }
}

bool ModelManager::WaitIdle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [this] { return pending_loads_ == 0; });
}

std::vector<ModelStatus> ModelManager::ListModels() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelStatus> out;
  for (const auto& [id, e] : entries_) out.push_back(e.status);
  return out;
}

std::vector<DeviceStatus> ModelManager::ListDevices() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeviceStatus> out;
  for (const auto& [name, q] : queues_) {
    out.push_back(DeviceStatus{name, q->depth(), q->capacity(), q->worker_alive(), q->jobs_run(), q->batches_run()});
  }
  return out;
}

bool ModelManager::AllWorkersAlive() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, q] : queues_) {
    if (!q->worker_alive()) return false;
  }
  return true;
}

bool ModelManager::AllReady() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, e] : entries_) {
    if (!e.serving) return false;
  }
  return pending_loads_ == 0;
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
    PublishLocked();
  }
  loader_thread_->Stop();
}

}  // namespace splitlearnd
