// DeviceQueue: the one bounded inference queue and the one worker thread of a device.
//
// Any thread may TryEnqueue(); only the worker runs models. The worker takes jobs in
// order, drops those whose deadline passed or whose caller cancelled (their forward
// never runs), merges compatible jobs of one model into a batch (DynamicBatching in
// docs/threading.md) and calls each job's `done` exactly once, on the worker thread.
// No lock is held while a model runs.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "manager/batch_policy.h"
#include "manager/model.h"

namespace splitlearnd {

using SteadyClock = std::chrono::steady_clock;

struct JobTiming {
  SteadyClock::time_point enqueued;
  SteadyClock::time_point started;   // when the forward began (= finished if it never ran)
  SteadyClock::time_point finished;
  int batch_size = 0;                // jobs in the forward that served this one; 0: never ran
};

struct Job {
  ModelHandle model;
  InferenceRequest request;

  // Jobs merge only when their models and batch keys are equal; 0 never merges.
  uint64_t batch_key = 0;
  int64_t rows = 1;  // size of dim 0 of every input
  int max_batch_size = 1;
  // The most the worker holds this job's batch waiting for more jobs (0: it merges only
  // jobs already queued). By default the worker waits only while the model's recent
  // traffic says more are about to arrive (BatchPolicy); with fixed_wait it waits for a
  // full batch until max_delay_us after this job arrived.
  int64_t max_delay_us = 0;
  bool fixed_wait = false;

  SteadyClock::time_point deadline = SteadyClock::time_point::max();
  std::shared_ptr<const std::atomic<bool>> cancelled;  // may be null

  // Work other than a forward (backward, session control): when set, the worker calls
  // it instead of Model::Run. Such jobs never merge (keep batch_key 0).
  std::function<StatusOr<InferenceResult>(const Model&)> custom;
  // The daemon's own work (a warmup), not a client's: left out of jobs_run(),
  // batches_run() and on_batch.
  bool internal = false;

  // Called exactly once, on the worker thread, unless TryEnqueue refused the job.
  std::function<void(StatusOr<InferenceResult>, const JobTiming&)> done;

  SteadyClock::time_point enqueued;  // set by TryEnqueue
};

class DeviceQueue {
 public:
  struct Hooks {
    std::function<void()> init_worker;  // first thing on the worker thread (thread settings)
    std::function<void(int)> on_batch;  // on the worker after each forward, with its batch size
  };
  DeviceQueue(std::string device, size_t capacity, Hooks hooks = {});
  ~DeviceQueue();  // Stop()s; jobs still queued finish with UNAVAILABLE
  DeviceQueue(const DeviceQueue&) = delete;
  DeviceQueue& operator=(const DeviceQueue&) = delete;

  // On success the queue owns the job (and `job` is null). On failure the caller still
  // owns it: RESOURCE_EXHAUSTED when full, UNAVAILABLE once stopped.
  Status TryEnqueue(std::unique_ptr<Job>& job);

  // Refuses new jobs, finishes the queued ones with UNAVAILABLE, joins the worker.
  void Stop();

  const std::string& device() const { return device_; }
  size_t capacity() const { return capacity_; }
  size_t depth() const;
  bool worker_alive() const { return worker_alive_.load(); }
  std::thread::id worker_thread_id() const { return worker_id_; }

  // Counters since start (any thread).
  uint64_t jobs_run() const { return jobs_run_.load(); }
  uint64_t batches_run() const { return batches_run_.load(); }
  uint64_t jobs_dropped() const { return jobs_dropped_.load(); }
  uint64_t pin_failures() const { return pin_failures_.load(); }

  // How long the worker keeps polling for the next job (yielding the core between
  // polls) before it sleeps on the condition variable. A sleeping worker costs a futex
  // wake-up and a cold start per call; 0 sleeps at once. Any thread, takes effect on
  // the next idle spell.
  void SetIdleSpin(std::chrono::microseconds spin) { idle_spin_us_.store(spin.count(), std::memory_order_relaxed); }

  // The CPUs the worker thread runs on (empty: every CPU the process may use). Any
  // thread; the worker applies it before its next batch (or at once when it starts).
  void SetCpus(std::vector<int> cpus);
  std::vector<int> cpus() const;

 private:
  void WorkerLoop();
  // Applies SetCpus() on the worker (lock held on entry and exit).
  void RepinIfChanged(std::unique_lock<std::mutex>& lock);
  // Polls queued_ for up to idle_spin_us_ with the lock released; returns with it held.
  void SpinForWork(std::unique_lock<std::mutex>& lock);
  // Takes the next batch off the queue (lock held); may wait up to max_delay_us.
  std::vector<std::unique_ptr<Job>> NextBatch(std::unique_lock<std::mutex>& lock);
  // Finishes jobs that should not run (lock not held).
  bool DropIfDead(std::unique_ptr<Job>& job, SteadyClock::time_point now);
  void RunBatch(std::vector<std::unique_ptr<Job>>& batch);

  const std::string device_;
  const size_t capacity_;
  const Hooks hooks_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> jobs_;
  bool stopping_ = false;
  BatchPolicy batch_policy_;  // guarded by mu_

  std::vector<int> cpus_;     // guarded by mu_
  bool cpus_changed_ = false;  // guarded by mu_; the worker re-pins itself when set
  std::atomic<bool> worker_alive_{false};
  std::atomic<size_t> queued_{0};        // jobs_.size(), readable without the lock
  std::atomic<int64_t> idle_spin_us_{0};
  std::atomic<bool> stop_requested_{false};  // stopping_, readable without the lock
  std::atomic<uint64_t> jobs_run_{0}, batches_run_{0}, jobs_dropped_{0}, pin_failures_{0};
  std::thread::id worker_id_;
  std::thread worker_;
};

}  // namespace splitlearnd
