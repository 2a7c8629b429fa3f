// See packed_gemm_pool.h.
#include "manager/torchscript/packed_gemm_pool.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#if defined(__x86_64__)  // Gemm, its only user, runs on x86-64 alone
#include <immintrin.h>

namespace splitlearnd::packed_gemm::detail {

namespace {

// Polls `ready` with a CPU pause between tries for up to 50 microseconds; true if it
// turned true. Cheaper than sleeping when the wait is short: waking a sleeping thread
// costs tens of microseconds on a VM.
template <typename Ready>
bool PollBriefly(const Ready& ready) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  for (uint32_t i = 1; !ready(); ++i) {
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return false;
    _mm_pause();
  }
  return true;
}

}  // namespace

HelperPool& HelperPool::Get() {
  static HelperPool pool;
  return pool;
}

void HelperPool::RunParts(int parts, void (*fn)(const void*, int), const void* arg) {
  Call call;
  call.pending.store(parts - 1, std::memory_order_relaxed);
  call.fn = fn;
  call.arg = arg;
  {
    std::lock_guard<std::mutex> lock(mu_);
    EnsureThreads(parts - 1);
    for (int i = 1; i < parts; ++i) queue_.push_back(Task{&call, i});
    queued_.store(queue_.size(), std::memory_order_release);
  }
  cv_.notify_all();
  fn(arg, 0);  // does not throw (Run's contract)
  // Parts no helper has taken yet run here, rather than waiting for a helper to wake.
  while (true) {
    Task task{};
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Task& t) { return t.call == &call; });
      if (it == queue_.end()) break;
      task = *it;
      queue_.erase(it);
      queued_.store(queue_.size(), std::memory_order_release);
    }
    Finish(task);
  }
  // The helpers' parts take about as long as this thread's: poll a little, then sleep.
  PollBriefly([&] { return call.pending.load(std::memory_order_acquire) == 0; });
  std::unique_lock<std::mutex> lock(call.mu);
  call.done.wait(lock, [&] { return call.pending.load(std::memory_order_acquire) == 0; });
}

HelperPool::~HelperPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void HelperPool::Finish(const Task& task) {
  task.call->fn(task.call->arg, task.part);
  // Under the call's lock: the caller returns (and its Call goes away) only after
  // taking that lock and seeing no part pending, so no helper touches it after.
  std::lock_guard<std::mutex> lock(task.call->mu);
  if (task.call->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) task.call->done.notify_one();
}

void HelperPool::EnsureThreads(int n) {
  while (static_cast<int>(threads_.size()) < n) threads_.emplace_back([this] { Loop(); });
}

void HelperPool::Loop() {
  pthread_setname_np(pthread_self(), "sld-gemm");
  while (true) {
    PollBriefly([this] { return queued_.load(std::memory_order_acquire) > 0; });
    Task task{};
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      task = queue_.front();
      queue_.pop_front();
      queued_.store(queue_.size(), std::memory_order_release);
    }
    Finish(task);
  }
}

}  // namespace splitlearnd::packed_gemm::detail

#endif  // defined(__x86_64__)
