// ModelManager's status views: models, versions still draining, devices, and the
// summaries that health and readiness go by. All read under the manager's lock.
#include "manager/model_manager.h"

#include <chrono>

#include "manager/model_manager_entry.h"

namespace splitlearnd {

const char* ModelStateName(ModelState s) {
  switch (s) {
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kUnloading: return "UNLOADING";
    case ModelState::kFailed: return "FAILED";
    case ModelState::kUnloaded: return "UNLOADED";
  }
  return "?";
}

ModelStatus ModelManager::StatusOf(const Entry& e) const {
  ModelStatus s = e.status;
  s.from_config = e.from_config;
  s.is_default = !default_id_.empty() && e.config.id == default_id_;
  s.load_pending = e.load_generation != 0;
  s.timeout_ms = e.config.timeout_ms;
  s.max_batch_size = e.config.batching.max_batch_size;
  const int64_t ns = e.last_used_ns->load(std::memory_order_relaxed);
  s.last_used = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(ns)));
  if (!e.serving) {
    s.device = e.config.device;
    s.path = e.config.path;
  }
  return s;
}

std::vector<ModelStatus> ModelManager::ListModels() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelStatus> out;
  for (const auto& [id, e] : entries_) out.push_back(StatusOf(e));
  return out;
}

std::optional<ModelStatus> ModelManager::GetModel(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  return StatusOf(it->second);
}

std::vector<ModelStatus> ModelManager::ListDraining() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelStatus> out;
  for (const auto& [version, s] : draining_) out.push_back(s);
  return out;
}

std::vector<DeviceStatus> ModelManager::ListDevices() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeviceStatus> out;
  for (const auto& [name, q] : queues_) {
    DeviceStatus d{name, q->depth(), q->capacity(), q->worker_alive(), q->jobs_run(), q->batches_run()};
    const DeviceConfig& c = DeviceSettings(name);
    d.max_models = c.max_models;
    d.memory_budget_bytes = c.memory_budget_bytes;
    d.evict_lru = c.evict_lru;
    for (const auto& [id, e] : entries_) {
      if (e.serving && e.serving->config.device == name) {
        ++d.models;
        d.memory_used_bytes += e.status.parameter_bytes;
      }
    }
    out.push_back(d);
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
    if (e.status.state == ModelState::kUnloaded) continue;
    if (!e.serving) return false;
  }
  return pending_loads_ == 0;
}

int ModelManager::ServingCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [id, e] : entries_) n += e.serving ? 1 : 0;
  return n;
}

}  // namespace splitlearnd
