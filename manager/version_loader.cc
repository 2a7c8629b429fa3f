#include "manager/version_loader.h"

#include <chrono>
#include <exception>
#include <future>
#include <thread>

namespace splitlearnd {

VersionLoader::VersionLoader(std::shared_ptr<ModelLoader> loader, FileDigest file_digest, QueueFor queue_for,
                             const std::atomic<bool>& stopping)
    : loader_(std::move(loader)),
      file_digest_(std::move(file_digest)),
      queue_for_(std::move(queue_for)),
      stopping_(stopping) {}

VersionLoad VersionLoader::Load(Request request) const {
  const ModelConfig& config = request.config;
  VersionLoad out;
  out.fingerprint = request.fingerprint;
  if (stopping_) {  // the loader is draining its queue at shutdown: load nothing
    out.loaded = Unavailable("splitlearnd is shutting down");
    return out;
  }
  if (file_digest_) {
    auto digest = file_digest_(config.path);
    if (digest.ok()) out.digest = std::move(digest.value());
  }
  if (!request.expected_digest.empty() && out.digest == request.expected_digest) {
    out.unchanged = true;
    return out;
  }
  const auto t0 = SteadyClock::now();
  Status saved;
  if (request.checkpoint_model) {
    const std::string path = config.training.checkpoint_path;
    auto job = std::make_unique<Job>();
    // Non-owning, as for warmup: `request` keeps the model alive until the job is
    // done, so the worker never frees it.
    job->model = ModelHandle(ModelHandle(), request.checkpoint_model.get());
    job->custom = [path](const Model& m) -> StatusOr<InferenceResult> {
      if (auto s = m.SaveCheckpoint(path); !s.ok()) return s;
      return InferenceResult{};
    };
    saved = RunOnWorker(request.checkpoint_queue, std::move(job));
    if (saved.code() == StatusCode::kFailedPrecondition) saved = Status::Ok();  // not trained here: nothing to carry
    request.checkpoint_model.reset();
    request.checkpoint_queue.reset();
  }
  if (!saved.ok()) {
    // Loading now would start the new version from an older state: keep the one
    // that serves (and what it learnt), and say why.
    out.loaded = Status(saved.code(),
                        "the serving version's checkpoint, written before a new version loads, failed: " +
                            saved.message());
  } else {
    out.loaded = loader_->Load(config);
  }
  if (out.loaded.ok() && !config.warmup.inputs.empty()) {
    Status warm = WarmOnWorker(config, *out.loaded.value());
    if (!warm.ok()) out.loaded = warm;  // the model is freed here, on the loader thread
  }
  out.seconds = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  return out;
}

Status VersionLoader::WarmOnWorker(const ModelConfig& config, const Model& model) const {
  std::shared_ptr<DeviceQueue> queue = queue_for_(config.device);
  auto job = std::make_unique<Job>();
  // A non-owning handle: this thread owns the model and waits below until the worker
  // is done with it, so the model is never freed on the worker.
  job->model = ModelHandle(ModelHandle(), &model);
  job->internal = true;
  job->custom = [max_batch = config.batching.max_batch_size](const Model& m) -> StatusOr<InferenceResult> {
    try {
      Status s = m.Warmup(max_batch);
      if (!s.ok()) return s;
      return InferenceResult{};
    } catch (const std::exception& e) {
      return Internal("warmup of '" + m.id() + "' threw: " + e.what());
    }
  };
  return RunOnWorker(queue, std::move(job));
}

Status VersionLoader::RunOnWorker(const std::shared_ptr<DeviceQueue>& queue, std::unique_ptr<Job> job) const {
  auto result = std::make_shared<std::promise<Status>>();
  std::future<Status> finished = result->get_future();
  job->internal = true;
  job->done = [result](StatusOr<InferenceResult> r, const JobTiming&) { result->set_value(r.status()); };
  // A full queue (the device busy serving) delays the job; it never skips it.
  while (true) {
    Status s = queue->TryEnqueue(job);
    if (s.ok()) break;
    if (s.code() != StatusCode::kResourceExhausted || stopping_) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return finished.get();
}

}  // namespace splitlearnd
