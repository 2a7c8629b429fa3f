// ModelManager: which models exist, in which state, and where requests for them go.
//
// Apply() takes a whole validated Config and brings the served set to it: new models
// load, removed ones leave routing at once (requests in flight keep their handles),
// changed ones load beside the running version and are swapped in only once ready;
// a changed model FILE (same path, new bytes) counts as a change. Options that need no
// reload (timeouts, batching) take effect in place. Management calls (Load, Unload,
// Reload) go through the same machinery.
//
// Loading runs on the manager's loader thread, never on a request path; warmup runs
// on the model's device worker, queued like any job, before the version serves.
// Models are destroyed on the loader thread too, after their last request.
//
// Per-device limits (max_models, memory_budget_bytes) are checked when a load
// finishes: over a limit the load is refused, or where the device says evict_lru the
// least recently used models of that device are unloaded to make room.
//
// Its parts: VersionLoader (version_loader.h) builds a version on the loader thread,
// MakeRoom (device_limits.h) applies a device's limits, model_manager_status.cc has
// the status views; model_manager.cc keeps the states, the routing and the calls
// that change them.
//
// Thread safety: every public method may be called from any thread. Lookup() is the
// hot path: it copies one shared_ptr under a short lock and stamps the model's
// last-use time (one relaxed atomic store).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/digest.h"
#include "common/status.h"
#include "config/config.h"
#include "manager/device_queue.h"
#include "manager/model.h"
#include "manager/task_thread.h"
#include "manager/version_loader.h"

namespace splitlearnd {

// LOADING: no version serves yet. READY: a version serves (a newer one may be loading
// beside it). UNLOADING: out of routing, waiting for its last request. FAILED: the
// load failed and nothing serves. UNLOADED: known from the config but not loaded (an
// operator unloaded it, or it was evicted); it stays so until its config changes or
// it is loaded again.
enum class ModelState { kLoading, kReady, kUnloading, kFailed, kUnloaded };
const char* ModelStateName(ModelState s);

// Where a request for one model goes. Immutable once published (last_used aside).
struct Route {
  ModelHandle model;
  std::shared_ptr<DeviceQueue> queue;
  ModelConfig config;
  uint64_t version = 0;  // increases each time this id is (re)loaded
  // Nanoseconds since the Unix epoch of the last Lookup(); shared by every version of
  // one model id, for least-recently-used eviction and status.
  std::shared_ptr<std::atomic<int64_t>> last_used_ns;
};

struct ModelStatus {
  std::string id;
  std::string device;
  std::string path;
  ModelState state = ModelState::kLoading;
  std::string last_error;   // also set while READY when a newer version failed to load
  StatusCode last_error_code = StatusCode::kOk;
  uint64_t version = 0;     // of the version serving (0: none)
  int64_t parameter_bytes = 0;
  double load_seconds = 0;
  std::string sha256;       // of the serving version's file, when the manager has a digest hook
  bool from_config = true;  // false: loaded by path through the management API
  bool is_default = false;
  bool load_pending = false;
  int64_t timeout_ms = 0;   // options in effect (they change in place)
  int max_batch_size = 1;
  std::chrono::system_clock::time_point state_since;
  std::chrono::system_clock::time_point loaded_at;  // of the serving version
  std::chrono::system_clock::time_point last_used;  // epoch: never
};

struct DeviceStatus {
  std::string name;
  size_t queue_depth = 0;
  size_t queue_capacity = 0;
  bool worker_alive = false;
  uint64_t jobs_run = 0;
  uint64_t batches_run = 0;
  int models = 0;                  // versions serving on the device
  int64_t memory_used_bytes = 0;   // their parameter bytes
  int max_models = 0;
  int64_t memory_budget_bytes = 0;
  bool evict_lru = false;
};

// What Apply() decided, by model id.
struct ApplyResult {
  std::vector<std::string> added;         // new: loading
  std::vector<std::string> changed;       // load-relevant config changed: a new version loads
  std::vector<std::string> file_changed;  // same config, the file changed on disk: checked, reloaded if its bytes differ
  std::vector<std::string> retried;       // had FAILED: loading again
  std::vector<std::string> updated;       // options applied in place
  std::vector<std::string> removed;       // out of routing, unloading
  std::vector<std::string> unchanged;
};

class ModelManager {
 public:
  struct Hooks {
    std::function<void(const std::string& device, int batch_size)> on_batch;
    // Under the manager's lock: keep it short, and do not call back into the manager.
    std::function<void(const ModelStatus&)> on_state_change;
    // A version left routing earlier and its last handle is gone (loader thread).
    std::function<void(const std::string& id, uint64_t version)> on_version_released;
    // Content digest of a model file (e.g. SHA-256), run on the loader thread. When
    // set, a file whose stat fingerprint changed but whose digest did not is not
    // reloaded, and status shows the digest.
    std::function<StatusOr<std::string>(const std::string& path)> file_digest;
  };

  explicit ModelManager(std::shared_ptr<ModelLoader> loader, Hooks hooks = {});
  ~ModelManager();  // Shutdown()

  // Brings the config's models to `config` (see above). Returns at once; loads go on
  // in the background. Models loaded by path through Load() are left alone unless
  // the config now has a model with the same id. Devices are created on first use.
  ApplyResult Apply(const Config& config);

  // Management calls. Load: loads `config` unless a version of it already serves
  // (then OK). `from_config` false marks a model loaded by path; such a model may
  // not take the id of a known model (ALREADY_EXISTS). Unload: out of routing at
  // once (later lookups: NOT_FOUND); memory goes with the last request. Reload:
  // loads the model's current config again even if nothing changed.
  Status Load(const ModelConfig& config, bool from_config);
  Status Unload(const std::string& id);
  Status Reload(const std::string& id);

  // Blocks until no load is pending (for `id`, or for any model), or the timeout
  // passes. True if settled.
  bool WaitIdle(std::chrono::milliseconds timeout) const;
  bool WaitForModel(const std::string& id, std::chrono::milliseconds timeout) const;

  // The route for `id` (empty: the default model). NOT_FOUND for an unknown or
  // unloaded id, UNAVAILABLE while it loads or after its load failed. For requests:
  // it marks the model used (least-recently-used eviction and status go by it).
  StatusOr<std::shared_ptr<const Route>> Lookup(const std::string& id) const;
  // The same without marking the model used: for status, metrics and housekeeping.
  StatusOr<std::shared_ptr<const Route>> Peek(const std::string& id) const;

  std::vector<ModelStatus> ListModels() const;
  std::optional<ModelStatus> GetModel(const std::string& id) const;
  // Versions out of routing whose memory is not released yet (state UNLOADING).
  std::vector<ModelStatus> ListDraining() const;
  std::vector<DeviceStatus> ListDevices() const;
  // True while every device worker thread runs.
  bool AllWorkersAlive() const;
  // True when every model that should serve is READY and no load is pending.
  bool AllReady() const;
  // Models with a version serving.
  int ServingCount() const;

  // Stops the device queues (queued jobs finish with UNAVAILABLE) and the loader.
  void Shutdown();

 private:
  struct Entry;
  struct ReleaseSink;
  using RouteMap = std::map<std::string, std::shared_ptr<const Route>>;
  struct Routing {
    RouteMap routes;
    std::string default_id;
  };

  std::shared_ptr<DeviceQueue> QueueFor(const std::string& device);
  const DeviceConfig& DeviceSettings(const std::string& device) const;
  // The device's `cpus`, else server.cpus (lock held).
  std::vector<int> WorkerCpus(const std::string& device) const;
  // `expected_digest` non-empty: skip the load if the file's digest equals it.
  void StartLoad(Entry& e, const FileFingerprint& fingerprint, std::string expected_digest = "");
  void FinishLoad(const std::string& id, uint64_t generation, VersionLoad outcome);
  // Makes room on `device` for `incoming` (bytes) of model `id`, evicting where allowed.
  Status CheckLimitsLocked(const std::string& id, const std::string& device, int64_t incoming);
  void RetireLocked(Entry& e);  // serving version -> draining
  void OnVersionReleased(const std::string& id, uint64_t version);
  void PublishLocked();
  ModelHandle WrapHandle(std::shared_ptr<Model> model, const std::string& id, uint64_t version);
  void SetState(Entry& e, ModelState s, std::string error = "", StatusCode code = StatusCode::kUnknown);
  ModelStatus StatusOf(const Entry& e) const;
  StatusOr<std::shared_ptr<const Route>> Find(const std::string& id, bool mark_used) const;

  std::shared_ptr<ModelLoader> loader_;
  Hooks hooks_;
  std::shared_ptr<TaskThread> loader_thread_;
  std::shared_ptr<ReleaseSink> release_sink_;

  mutable std::mutex mu_;
  mutable std::condition_variable idle_cv_;
  std::map<std::string, Entry> entries_;
  std::map<uint64_t, ModelStatus> draining_;  // by version
  std::map<std::string, std::shared_ptr<DeviceQueue>> queues_;
  std::map<std::string, DeviceConfig> device_configs_;
  std::vector<int> server_cpus_;
  std::string default_id_;
  int pending_loads_ = 0;
  uint64_t generation_ = 0;
  uint64_t next_version_ = 1;
  std::atomic<bool> shut_down_{false};
  VersionLoader version_loader_;  // runs on loader_thread_ only

  mutable std::mutex routing_mu_;
  std::shared_ptr<const Routing> routing_;
};

}  // namespace splitlearnd
