#include "manager/device_queue.h"

#include <algorithm>

#include "common/cpus.h"

namespace splitlearnd {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#else
  std::this_thread::yield();
#endif
}

}  // namespace

DeviceQueue::DeviceQueue(std::string device, size_t capacity, Hooks hooks)
    : device_(std::move(device)), capacity_(capacity), hooks_(std::move(hooks)) {
  worker_alive_ = true;
  worker_ = std::thread([this] { WorkerLoop(); });
  worker_id_ = worker_.get_id();
}

DeviceQueue::~DeviceQueue() { Stop(); }

Status DeviceQueue::TryEnqueue(std::unique_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Unavailable("device " + device_ + " is shutting down");
    if (jobs_.size() >= capacity_) {
      return ResourceExhausted("queue of device " + device_ + " is full (" + std::to_string(capacity_) + " requests)");
    }
    job->enqueued = SteadyClock::now();
    if (job->batch_key != 0 && job->max_batch_size > 1 && !job->internal) {
      batch_policy_.Arrived(job->model.get(), job->batch_key, job->rows, job->enqueued);
    }
    jobs_.push_back(std::move(job));
    queued_.store(jobs_.size(), std::memory_order_release);
  }
  cv_.notify_one();
  return Status::Ok();
}

void DeviceQueue::SetCpus(std::vector<int> cpus) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cpus == cpus_) return;
  cpus_ = std::move(cpus);
  cpus_changed_ = true;
}

std::vector<int> DeviceQueue::cpus() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cpus_;
}

size_t DeviceQueue::depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.size();
}

void DeviceQueue::Stop() {
  std::deque<std::unique_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    stop_requested_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(jobs_);
    queued_.store(0, std::memory_order_release);
  }
  for (auto& job : left) {
    const auto now = SteadyClock::now();
    job->done(Unavailable("device " + device_ + " stopped before the request ran"), JobTiming{job->enqueued, now, now, 0});
  }
}

bool DeviceQueue::DropIfDead(std::unique_ptr<Job>& job, SteadyClock::time_point now) {
  Status why;
  if (job->cancelled && job->cancelled->load(std::memory_order_relaxed)) {
    why = Cancelled("the client cancelled the request");
  } else if (now >= job->deadline) {
    why = DeadlineExceeded("deadline passed while the request waited in the queue of device " + device_);
  } else {
    return false;
  }
  jobs_dropped_.fetch_add(1, std::memory_order_relaxed);
  job->done(std::move(why), JobTiming{job->enqueued, now, now, 0});
  job.reset();
  return true;
}

std::vector<std::unique_ptr<Job>> DeviceQueue::NextBatch(std::unique_lock<std::mutex>& lock) {
  std::vector<std::unique_ptr<Job>> batch;
  batch.push_back(std::move(jobs_.front()));
  jobs_.pop_front();
  Job& head = *batch.front();
  if (head.batch_key == 0 || head.max_batch_size <= 1 || head.rows >= head.max_batch_size) return batch;

  int64_t rows = head.rows;
  // Pull every compatible job already waiting, in arrival order.
  auto gather = [&] {
    for (auto it = jobs_.begin(); it != jobs_.end() && rows < head.max_batch_size;) {
      Job& j = **it;
      if (j.model == head.model && j.batch_key == head.batch_key && rows + j.rows <= head.max_batch_size) {
        rows += j.rows;
        batch.push_back(std::move(*it));
        it = jobs_.erase(it);
      } else {
        ++it;
      }
    }
  };
  gather();
  if (head.max_delay_us <= 0 || rows >= head.max_batch_size) return batch;
  if (head.fixed_wait) {
    const auto until = std::min(head.enqueued + std::chrono::microseconds(head.max_delay_us), head.deadline);
    while (rows < head.max_batch_size && !stopping_) {
      if (cv_.wait_until(lock, until) == std::cv_status::timeout) {
        gather();
        break;
      }
      gather();
    }
    return batch;
  }
  // Adaptive: wait only while the policy expects company soon enough to pay, asking
  // again after every arrival; never longer than max_delay_us from now.
  auto now = SteadyClock::now();
  batch_policy_.Took(head.model, head.batch_key, rows, head.max_batch_size, now);
  const auto bound = std::min(now + std::chrono::microseconds(head.max_delay_us), head.deadline);
  while (rows < head.max_batch_size && !stopping_) {
    const auto until = batch_policy_.WaitUntil(rows, now, bound);
    if (until <= now) break;
    cv_.wait_until(lock, until);
    gather();
    now = SteadyClock::now();
  }
  return batch;
}

void DeviceQueue::RunBatch(std::vector<std::unique_ptr<Job>>& batch) {
  const auto started = SteadyClock::now();
  // Drop dead jobs first: their forward never runs.
  batch.erase(std::remove_if(batch.begin(), batch.end(), [&](std::unique_ptr<Job>& j) { return DropIfDead(j, started); }),
              batch.end());
  if (batch.empty()) return;

  std::vector<StatusOr<InferenceResult>> results;
  try {
    if (batch.front()->custom) {
      results.push_back(batch.front()->custom(*batch.front()->model));
    } else {
      std::vector<const InferenceRequest*> requests;
      requests.reserve(batch.size());
      for (const auto& j : batch) requests.push_back(&j->request);
      results = batch.front()->model->Run(requests);
    }
  } catch (const std::exception& e) {
    // A Model answers with statuses and should never throw; if one does, its batch
    // fails rather than the worker (and with it the daemon).
    results.assign(batch.size(), Internal(std::string("model threw: ") + e.what()));
  }
  const auto finished = SteadyClock::now();
  const int n = static_cast<int>(batch.size());
  const Job& head = *batch.front();
  if (!head.custom && head.batch_key != 0 && head.max_batch_size > 1) {
    // Before any answer goes out: a client's next request must not look like company
    // that arrived during this batch.
    int64_t rows = 0;
    for (const auto& j : batch) rows += j->rows;
    std::lock_guard<std::mutex> lock(mu_);
    batch_policy_.Ran(head.model, rows, finished - started);
  }
  if (!batch.front()->internal) {
    jobs_run_.fetch_add(n, std::memory_order_relaxed);
    batches_run_.fetch_add(1, std::memory_order_relaxed);
    if (hooks_.on_batch) hooks_.on_batch(n);
  }

  for (size_t i = 0; i < batch.size(); ++i) {
    JobTiming timing{batch[i]->enqueued, started, finished, n};
    if (i < results.size()) {
      batch[i]->done(std::move(results[i]), timing);
    } else {
      batch[i]->done(Internal("model returned fewer results than requests"), timing);
    }
  }
}

void DeviceQueue::SpinForWork(std::unique_lock<std::mutex>& lock) {
  const int64_t spin_us = idle_spin_us_.load(std::memory_order_relaxed);
  if (spin_us <= 0) return;
  lock.unlock();
  const auto until = SteadyClock::now() + std::chrono::microseconds(spin_us);
  // A pause between polls (not a yield): it leaves the core's execution units to a
  // hyperthread sibling, which on a VM may be the CPU the gRPC threads run on.
  for (uint32_t i = 1; queued_.load(std::memory_order_acquire) == 0 && !stop_requested_.load(std::memory_order_acquire);
       ++i) {
    CpuRelax();
    if (i % 64 == 0 && SteadyClock::now() >= until) break;
  }
  lock.lock();
}

void DeviceQueue::RepinIfChanged(std::unique_lock<std::mutex>& lock) {
  if (!cpus_changed_) return;
  cpus_changed_ = false;
  const std::vector<int> cpus = cpus_;
  lock.unlock();
  // The daemon checks the CPUs against the process's set before it applies a config,
  // so a failure here leaves the worker where it was and is only counted.
  if (!PinCurrentThread(cpus).ok()) pin_failures_.fetch_add(1, std::memory_order_relaxed);
  lock.lock();
}

void DeviceQueue::WorkerLoop() {
  NameCurrentThread("sld-" + device_);
  if (hooks_.init_worker) hooks_.init_worker();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    RepinIfChanged(lock);
    if (jobs_.empty() && !stopping_) SpinForWork(lock);
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (stopping_) break;
    RepinIfChanged(lock);
    std::vector<std::unique_ptr<Job>> batch = NextBatch(lock);
    queued_.store(jobs_.size(), std::memory_order_release);
    lock.unlock();
    RunBatch(batch);
    batch.clear();  // job destructors (and their handles) run before the lock is retaken
    lock.lock();
  }
  worker_alive_ = false;
}

}  // namespace splitlearnd
