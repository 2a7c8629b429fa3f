// VersionLoader: builds one new version of a model, on the manager's loader thread
// and nowhere else. In order: the file's digest (when it equals the serving
// version's, nothing is loaded), the serving version's checkpoint when the new
// version resumes from it, the load, and the warmup on the device worker that will
// serve the model. It touches no manager state; ModelManager decides what becomes of
// the result (limits, routing, status).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "common/digest.h"
#include "common/status.h"
#include "config/config.h"
#include "manager/device_queue.h"
#include "manager/model.h"

namespace splitlearnd {

// What building one version came to.
struct VersionLoad {
  StatusOr<std::shared_ptr<Model>> loaded = Status(StatusCode::kUnknown, "not loaded");
  bool unchanged = false;  // the digest matched the serving version: nothing was loaded
  double seconds = 0;
  FileFingerprint fingerprint;
  std::string digest;
};

class VersionLoader {
 public:
  using FileDigest = std::function<StatusOr<std::string>(const std::string& path)>;
  // The queue (and worker) of a device, created on first use.
  using QueueFor = std::function<std::shared_ptr<DeviceQueue>(const std::string& device)>;

  struct Request {
    ModelConfig config;
    FileFingerprint fingerprint;  // of the file, taken when the load was asked for
    std::string expected_digest;  // non-empty: load nothing if the file's digest equals it
    // The serving version, set when the new one resumes from its checkpoint: it
    // writes the checkpoint first, on its own worker.
    ModelHandle checkpoint_model;
    std::shared_ptr<DeviceQueue> checkpoint_queue;
  };

  // `file_digest` may be empty (no digests). `stopping` is set at shutdown and must
  // outlive this object.
  VersionLoader(std::shared_ptr<ModelLoader> loader, FileDigest file_digest, QueueFor queue_for,
                const std::atomic<bool>& stopping);

  VersionLoad Load(Request request) const;

 private:
  // Runs Model::Warmup on the worker of the model's device and waits for it: the
  // worker that will serve the model is the one that gets warm.
  Status WarmOnWorker(const ModelConfig& config, const Model& model) const;
  // `job` (internal, custom) on `queue`, waiting while the queue is full; returns the
  // job's status.
  Status RunOnWorker(const std::shared_ptr<DeviceQueue>& queue, std::unique_ptr<Job> job) const;

  std::shared_ptr<ModelLoader> loader_;
  FileDigest file_digest_;
  QueueFor queue_for_;
  const std::atomic<bool>& stopping_;
};

}  // namespace splitlearnd
