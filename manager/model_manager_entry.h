// ModelManager's record of one model id: private to manager/model_manager*.cc.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "manager/model_manager.h"

namespace splitlearnd {

struct ModelManager::Entry {
  ModelConfig config;                     // the desired config
  std::shared_ptr<const Route> serving;  // the version requests go to; null when none
  ModelStatus status;
  bool from_config = true;
  uint64_t load_generation = 0;          // of the load in flight (0: none)
  FileFingerprint fingerprint;           // of the file the serving (or last) version came from
  FileFingerprint pending_fingerprint;   // of the file the load in flight reads
  std::string digest;                    // of the serving version's file ("" when unknown)
  std::shared_ptr<std::atomic<int64_t>> last_used_ns = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace splitlearnd
