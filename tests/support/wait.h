// Waiting on events in tests, never on time. kWaitBound only ends a wait that would
// hang because a test failed: a passing test never comes near it, and no test asserts
// how long anything took.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace splitlearnd::testing {

inline constexpr std::chrono::seconds kWaitBound{30};

// Polls `done` until it holds; false if `bound` passed first.
inline bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds bound = kWaitBound) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Holds the threads that Pass() it while it is closed, so that a test can act while a
// forward (or a load) is certainly in progress, and then let it go. No thread is held
// longer than kWaitBound, so a test that fails before it opens the gate ends instead
// of hanging; expired() says a hold ran out, and a test that relied on it fails.
class Gate {
 public:
  explicit Gate(bool open = false) : open_(open) {}

  // The held side: returns once the gate is open.
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    ++held_;
    cv_.notify_all();
    if (!cv_.wait_for(lock, kWaitBound, [this] { return open_; })) expired_ = true;
    --held_;
  }

  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }

  // Until `n` threads are held at the gate; false if kWaitBound passed first.
  bool WaitForHeld(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWaitBound, [&] { return held_ >= n; });
  }

  bool expired() const {
    std::lock_guard<std::mutex> lock(mu_);
    return expired_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_;
  int held_ = 0;
  bool expired_ = false;
};

}  // namespace splitlearnd::testing
