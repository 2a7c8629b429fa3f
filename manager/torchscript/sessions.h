// The server-side KV caches of one TorchScript model (Model::OpenSession and session
// steps): which sessions are open, what each holds, and the limits on both. Includes
// libtorch; adapter-internal.
//
// Its own lock guards it, held only for bookkeeping, never across a forward: a step
// reads the session's past, runs the model, then commits the present. The counts
// Stats() reads are atomics, so status never waits on a step.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "common/status.h"
#include "config/config.h"
#include "manager/torchscript/outputs.h"

namespace splitlearnd {

class SessionStore {
 public:
  explicit SessionStore(std::string model_id) : model_id_(std::move(model_id)) {}

  // Opens an empty session named `wanted`, or one with a server-minted id when
  // `wanted` is empty, after expiring idle ones; refused beyond limits.max_sessions.
  StatusOr<std::string> Open(const std::string& wanted, const SessionConfig& limits);
  // Closes a session; returns the bytes it held.
  StatusOr<int64_t> Close(const std::string& id);
  // Closes sessions idle longer than limits.idle_timeout_s.
  void Expire(const SessionConfig& limits);

  // The cache a step of session `id` starts from (after expiring idle sessions).
  StatusOr<KVList> Past(const std::string& id, const SessionConfig& limits);
  // Replaces the session's cache by `present`, unless all sessions would then hold more
  // than limits.max_bytes (the session is left as it was). Returns the sequence length
  // now cached. `present` must own its storage (no view of a request's bytes).
  StatusOr<int64_t> Commit(const std::string& id, KVList present, const SessionConfig& limits);

  int64_t count() const { return count_.load(); }
  int64_t bytes() const { return bytes_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Session {
    KVList kv;
    int64_t bytes = 0;
    Clock::time_point last_used;
  };

  void ExpireLocked(const SessionConfig& limits);  // mu_ held
  void UpdateStatsLocked();                        // mu_ held

  const std::string model_id_;
  std::mutex mu_;
  std::map<std::string, Session> sessions_;
  uint64_t serial_ = 0;
  std::atomic<int64_t> count_{0}, bytes_{0};
};

}  // namespace splitlearnd
