// A device's limits on the models it holds (max_models, memory_budget_bytes) and what
// evict_lru makes of a load that would break them. It only decides: ModelManager
// says which models serve on the device and retires the ones chosen here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"

namespace splitlearnd {

// A model serving on the device.
struct ResidentModel {
  std::string id;
  int64_t bytes = 0;
  int64_t last_used_ns = 0;  // its last use, or its load when it was never used
};

// The models to evict, least recently used first, so that model `id` with `incoming`
// bytes fits on `device` (limits: `limits`) beside `residents`; none when it fits as
// things are. RESOURCE_EXHAUSTED, naming the limit and the way out, when it cannot
// fit or the device does not evict.
StatusOr<std::vector<std::string>> MakeRoom(const DeviceConfig& limits, const std::string& device,
                                            const std::string& id, int64_t incoming,
                                            std::vector<ResidentModel> residents);

}  // namespace splitlearnd
