#include "manager/torchscript/sessions.h"

#include "manager/torchscript/random_id.h"

namespace splitlearnd {
namespace {

int64_t KVBytes(const KVList& kv) {
  int64_t n = 0;
  for (const auto& [k, v] : kv) n += static_cast<int64_t>(k.nbytes() + v.nbytes());
  return n;
}

}  // namespace

StatusOr<std::string> SessionStore::Open(const std::string& wanted, const SessionConfig& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(limits);
  if (static_cast<int>(sessions_.size()) >= limits.max_sessions) {
    return ResourceExhausted("model '" + model_id_ + "' already has " + std::to_string(sessions_.size()) +
                             " open sessions (max_sessions " + std::to_string(limits.max_sessions) + ")");
  }
  std::string id = wanted;
  if (id.empty()) {
    id = UnguessableId("s-", ++serial_);
  } else if (sessions_.count(id)) {
    return Status(StatusCode::kAlreadyExists, "session '" + id + "' is already open");
  }
  sessions_[id].last_used = Clock::now();
  UpdateStatsLocked();
  return id;
}

StatusOr<int64_t> SessionStore::Close(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFound("unknown or expired session '" + id + "'");
  const int64_t bytes = it->second.bytes;
  sessions_.erase(it);
  UpdateStatsLocked();
  return bytes;
}

void SessionStore::Expire(const SessionConfig& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(limits);
}

StatusOr<KVList> SessionStore::Past(const std::string& id, const SessionConfig& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(limits);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFound("unknown or expired session '" + id + "' of model '" + model_id_ + "'");
  return it->second.kv;
}

StatusOr<int64_t> SessionStore::Commit(const std::string& id, KVList present, const SessionConfig& limits) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NotFound("unknown or expired session '" + id + "' of model '" + model_id_ + "'");
  Session& session = it->second;
  const int64_t bytes = KVBytes(present);
  const int64_t others = bytes_.load() - session.bytes;
  if (others + bytes > limits.max_bytes) {
    return ResourceExhausted("sessions of model '" + model_id_ + "' would hold " + std::to_string(others + bytes) +
                             " bytes, over max_bytes " + std::to_string(limits.max_bytes));
  }
  session.kv = std::move(present);
  session.bytes = bytes;
  session.last_used = Clock::now();
  UpdateStatsLocked();
  return session.kv.empty() ? int64_t{0} : static_cast<int64_t>(session.kv.front().first.size(2));
}

void SessionStore::ExpireLocked(const SessionConfig& limits) {
  const auto now = Clock::now();
  bool changed = false;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (now - it->second.last_used > std::chrono::duration<double>(limits.idle_timeout_s)) {
      it = sessions_.erase(it);
      changed = true;
    } else {
      ++it;
    }
  }
  if (changed) UpdateStatsLocked();
}

void SessionStore::UpdateStatsLocked() {
  int64_t bytes = 0;
  for (const auto& [id, s] : sessions_) bytes += s.bytes;
  count_ = static_cast<int64_t>(sessions_.size());
  bytes_ = bytes;
}

}  // namespace splitlearnd
