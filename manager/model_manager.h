// ModelManager: which models exist, in which state, and where requests for them go.
//
// Apply() takes a whole validated Config and brings the served set to it: new models
// load, removed ones leave routing at once (requests in flight keep their handles),
// changed ones load beside the running version and are swapped in only once ready.
// Loading and warmup run on the manager's loader thread, never on a request path;
// models are destroyed on that thread too, after their last request.
//
// Thread safety: every public method may be called from any thread. Lookup() is the
// hot path: it copies one shared_ptr under a short lock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "manager/device_queue.h"
#include "manager/model.h"
#include "manager/task_thread.h"

namespace splitlearnd {

enum class ModelState { kLoading, kReady, kUnloading, kFailed };
const char* ModelStateName(ModelState s);

// Where a request for one model goes. Immutable once published.
struct Route {
  ModelHandle model;
  std::shared_ptr<DeviceQueue> queue;
  ModelConfig config;
  uint64_t version = 0;  // increases each time this id is (re)loaded
};

struct ModelStatus {
  std::string id;
  std::string device;
  std::string path;
  ModelState state = ModelState::kLoading;
  std::string last_error;
  uint64_t version = 0;  // of the version serving (0: none)
  int64_t parameter_bytes = 0;
  double load_seconds = 0;
  std::chrono::system_clock::time_point state_since;
};

struct DeviceStatus {
  std::string name;
  size_t queue_depth = 0;
  size_t queue_capacity = 0;
  bool worker_alive = false;
  uint64_t jobs_run = 0;
  uint64_t batches_run = 0;
};

class ModelManager {
 public:
  struct Hooks {
    std::function<void(const std::string& device, int batch_size)> on_batch;
    std::function<void(const ModelStatus&)> on_state_change;
  };

  explicit ModelManager(std::shared_ptr<ModelLoader> loader, Hooks hooks = {});
  ~ModelManager();  // Shutdown()

  // Brings the served models to `config` (see above). Returns at once; loads go on in
  // the background. Devices are created on first use.
  void Apply(const Config& config);

  // Blocks until no load is pending, or the timeout passes. True if settled.
  bool WaitIdle(std::chrono::milliseconds timeout) const;

  // The route for `id` (empty: the default model). NOT_FOUND for an unknown id,
  // UNAVAILABLE while it loads or after its load failed.
  StatusOr<std::shared_ptr<const Route>> Lookup(const std::string& id) const;

  std::vector<ModelStatus> ListModels() const;
  std::vector<DeviceStatus> ListDevices() const;
  // True while every device worker thread runs.
  bool AllWorkersAlive() const;
  // True when every configured model is READY.
  bool AllReady() const;

  // Stops the device queues (queued jobs finish with UNAVAILABLE) and the loader.
  void Shutdown();

 private:
  struct Entry;
  using RouteMap = std::map<std::string, std::shared_ptr<const Route>>;
  struct Routing {
    RouteMap routes;
    std::string default_id;
  };

  std::shared_ptr<DeviceQueue> QueueFor(const DeviceConfig& device);
  void StartLoad(const ModelConfig& config, uint64_t generation);
  void FinishLoad(const ModelConfig& config, uint64_t generation, StatusOr<std::shared_ptr<Model>> loaded,
                  double seconds);
  void PublishLocked();
  ModelHandle WrapHandle(std::shared_ptr<Model> model);
  void SetState(Entry& e, ModelState s, std::string error);

  std::shared_ptr<ModelLoader> loader_;
  Hooks hooks_;
  std::shared_ptr<TaskThread> loader_thread_;

  mutable std::mutex mu_;
  mutable std::condition_variable idle_cv_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::shared_ptr<DeviceQueue>> queues_;
  std::map<std::string, DeviceConfig> device_configs_;
  std::string default_id_;
  int pending_loads_ = 0;
  uint64_t generation_ = 0;
  uint64_t next_version_ = 1;
  bool shut_down_ = false;

  mutable std::mutex routing_mu_;
  std::shared_ptr<const Routing> routing_;
};

}  // namespace splitlearnd
