#pragma once
// RequestObserver: told of every finished compute request. ComputeServiceImpl calls it
// (from device workers and gRPC threads); Metrics implements it. A header of its own so
// that neither side includes the other.

#include <string>

#include "common/status.h"

namespace splitlearnd {

struct JobTiming;  // manager/device_queue.h

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // `model_id` is empty for a request that reached no model; `timing` is null for one
  // that never queued.
  virtual void OnRequestDone(const std::string& model_id, StatusCode code, const JobTiming* timing) = 0;
};

}  // namespace splitlearnd
