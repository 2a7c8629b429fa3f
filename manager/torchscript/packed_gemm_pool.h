// The helper threads (`sld-gemm`) that Gemm shares a call with when `threads` > 1:
// shared by the process and started on first use. packed_gemm-internal.
//
// A call queues its parts, runs the first itself, takes back any part no helper has
// started, and then waits for the rest. A helper that finishes a part polls for the
// next one for a little while before it sleeps: a forward's Linear layers come a few
// microseconds apart, and waking a sleeping thread costs tens of microseconds on a VM.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace splitlearnd::packed_gemm::detail {

class HelperPool {
 public:
  static HelperPool& Get();

  // Runs part(i) for i in [0, parts), part 0 on the calling thread. `part` must not
  // throw: a call's bookkeeping lives on the caller's stack until every part is done.
  template <typename Fn>
  void Run(int parts, const Fn& part) {
    RunParts(parts, [](const void* f, int i) { (*static_cast<const Fn*>(f))(i); }, &part);
  }

  ~HelperPool();

 private:
  struct Call {
    void (*fn)(const void*, int) = nullptr;
    const void* arg = nullptr;
    std::atomic<int> pending{0};
    std::mutex mu;
    std::condition_variable done;
  };
  struct Task {
    Call* call;
    int part;
  };

  HelperPool() = default;

  void RunParts(int parts, void (*fn)(const void*, int), const void* arg);
  static void Finish(const Task& task);
  void EnsureThreads(int n);  // with mu_ held
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  std::atomic<size_t> queued_{0};
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

}  // namespace splitlearnd::packed_gemm::detail
