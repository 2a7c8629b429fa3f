// Who may call: bearer tokens for gRPC calls, and the uid check of Unix management peers.
//
// Tokens come from a token file (server.auth.token_file), never from the YAML config.
// Only their SHA-256 digests are kept; a presented token is hashed and compared with
// every entry in constant time (CRYPTO_memcmp, no early exit). Logs name a token by
// its `<name>`, never by its value, and error messages never quote a line of the file.
//
// Authenticator::Check runs on gRPC's threads at the top of every compute and
// management call; Prepare/Install run on the reloader's thread (or main() at start).
// The policy in force is an immutable object swapped whole, so a check never waits
// for a reload.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/digest.h"
#include "common/status.h"
#include "config/config.h"

namespace splitlearnd {

// What a token may be used for; a token may have both.
enum class Scope : unsigned { kCompute = 1, kManagement = 2 };
const char* ScopeName(Scope scope);

struct TokenEntry {
  std::string name;
  unsigned scopes = 0;  // bits of Scope
  Sha256Digest digest{};  // of the token
  bool Has(Scope s) const { return (scopes & static_cast<unsigned>(s)) != 0; }
};

class TokenStore {
 public:
  // Reads `path`. Errors name the file and line and never quote the line. `warnings`
  // gets notes that do not refuse the file (mode readable by others, short tokens).
  static StatusOr<TokenStore> LoadFile(const std::string& path, std::vector<std::string>* warnings);
  // Same, from text; `origin` names it in messages.
  static StatusOr<TokenStore> Parse(const std::string& text, const std::string& origin,
                                    std::vector<std::string>* warnings);

  // The entry whose token is `token`, or null. Compares against every entry.
  const TokenEntry* Find(std::string_view token) const;
  size_t size() const { return entries_.size(); }
  const std::vector<TokenEntry>& entries() const { return entries_; }

 private:
  std::vector<TokenEntry> entries_;
};

// Who may connect to a Unix management socket.
struct UnixPeerPolicy {
  std::set<uid_t> uids;
  std::set<gid_t> gids;
  std::string description;  // "uids 0, 1000; groups splitlearnd (998)"

  // Resolves group names (an unknown name is an error); fills the defaults: root and
  // the daemon's own uid, the daemon's primary group.
  static StatusOr<UnixPeerPolicy> FromConfig(const AuthConfig& auth);
  // The peer's uid is listed, its gid is, or its user belongs to a listed group.
  bool Allows(uid_t uid, gid_t gid) const;
};

// How the call reached the daemon.
enum class Transport {
  kNetwork,          // TCP: tokens as configured
  kCheckedUnixPeer,  // a Unix socket whose peer passed UnixPeerPolicy: a token is optional
};

class Authenticator {
 public:
  struct Policy {
    AuthConfig config;
    std::shared_ptr<const TokenStore> tokens;  // empty store without token_file
    UnixPeerPolicy unix_peers;
  };

  Authenticator();

  // Reads the token file and resolves the peer policy; changes nothing.
  static StatusOr<std::shared_ptr<const Policy>> Prepare(const AuthConfig& auth, std::vector<std::string>* warnings);
  // Puts `policy` in force (logs what changed, by token name).
  void Install(std::shared_ptr<const Policy> policy);

  // OK, UNAUTHENTICATED (no token, an unknown one, a malformed header) or
  // PERMISSION_DENIED (a known token without `scope`). Refusals are logged (at most
  // one warning a second; the rest at debug), without the token.
  grpc::Status Check(const grpc::ServerContextBase& ctx, Scope scope, Transport transport) const;

  // Accept-time check of a Unix management peer.
  bool AllowsUnixPeer(uid_t uid, gid_t gid) const;
  bool compute_requires_token() const;
  std::shared_ptr<const Policy> policy() const { return std::atomic_load(&policy_); }

 private:
  grpc::Status Refuse(grpc::StatusCode code, const std::string& why, const grpc::ServerContextBase& ctx,
                      Scope scope) const;

  std::shared_ptr<const Policy> policy_;
  mutable std::atomic<int64_t> next_warning_ns_{0};
  mutable std::atomic<uint64_t> quiet_refusals_{0};
};

}  // namespace splitlearnd
