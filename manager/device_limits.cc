#include "manager/device_limits.h"

#include <algorithm>

namespace splitlearnd {

StatusOr<std::vector<std::string>> MakeRoom(const DeviceConfig& limits, const std::string& device,
                                            const std::string& id, int64_t incoming,
                                            std::vector<ResidentModel> residents) {
  std::vector<std::string> victims;
  if (limits.max_models <= 0 && limits.memory_budget_bytes <= 0) return victims;
  if (limits.memory_budget_bytes > 0 && incoming > limits.memory_budget_bytes) {
    return ResourceExhausted("model '" + id + "' needs " + std::to_string(incoming) + " bytes, more than the " +
                             std::to_string(limits.memory_budget_bytes) + "-byte memory_budget_bytes of device " +
                             device);
  }
  int64_t used = 0;
  for (const ResidentModel& r : residents) used += r.bytes;
  size_t count = residents.size();
  auto over = [&] {
    return (limits.max_models > 0 && count + 1 > static_cast<size_t>(limits.max_models)) ||
           (limits.memory_budget_bytes > 0 && used + incoming > limits.memory_budget_bytes);
  };
  if (!over()) return victims;
  if (!limits.evict_lru) {
    if (limits.max_models > 0 && count + 1 > static_cast<size_t>(limits.max_models)) {
      return ResourceExhausted("device " + device + " already holds " + std::to_string(count) +
                               " model(s), its max_models; unload one, raise the limit or set evict_lru");
    }
    return ResourceExhausted("loading model '" + id + "' (" + std::to_string(incoming) + " bytes) would bring device " +
                             device + " to " + std::to_string(used + incoming) + " bytes, over its " +
                             std::to_string(limits.memory_budget_bytes) +
                             "-byte memory_budget_bytes; unload a model, raise the budget or set evict_lru");
  }
  std::sort(residents.begin(), residents.end(),
            [](const ResidentModel& a, const ResidentModel& b) { return a.last_used_ns < b.last_used_ns; });
  for (const ResidentModel& r : residents) {
    if (!over()) break;
    victims.push_back(r.id);
    --count;
    used -= r.bytes;
  }
  return victims;
}

}  // namespace splitlearnd
