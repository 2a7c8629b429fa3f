#include "daemon/auth.h"

#include <fcntl.h>
#include <grp.h>
#include <openssl/crypto.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>

#include "common/ids.h"

namespace splitlearnd {
namespace {

constexpr size_t kMaxTokenFileBytes = 1 << 20;
constexpr size_t kShortToken = 16;

// The whitespace-separated fields of a line, up to a comment: a field that begins
// with '#' and the rest of the line.
std::vector<std::string> Fields(const std::string& line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i == line.size() || line[i] == '#') break;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

// "compute", "management" or both, comma separated; 0 when anything else.
unsigned ParseScopes(const std::string& text) {
  unsigned scopes = 0;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string part = text.substr(start, comma - start);
    if (part == "compute") {
      scopes |= static_cast<unsigned>(Scope::kCompute);
    } else if (part == "management") {
      scopes |= static_cast<unsigned>(Scope::kManagement);
    } else {
      return 0;
    }
    start = comma + 1;
  }
  return scopes;
}

std::string Lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Describe(const UnixPeerPolicy& p, const std::map<gid_t, std::string>& names) {
  std::string d = "uids ";
  if (p.uids.empty()) d += "(none)";
  bool first = true;
  for (uid_t u : p.uids) {
    d += (first ? "" : ", ") + std::to_string(u);
    first = false;
  }
  d += "; groups ";
  if (p.gids.empty()) d += "(none)";
  first = true;
  for (gid_t g : p.gids) {
    auto it = names.find(g);
    d += (first ? "" : ", ") + (it == names.end() ? std::string() : it->second + " ") + "(" + std::to_string(g) + ")";
    first = false;
  }
  return d;
}

std::string GroupName(gid_t gid) {
  std::vector<char> buf(16384);
  group gr{};
  group* found = nullptr;
  if (getgrgid_r(gid, &gr, buf.data(), buf.size(), &found) == 0 && found) return found->gr_name;
  return "";
}

}  // namespace

const char* ScopeName(Scope scope) { return scope == Scope::kCompute ? "compute" : "management"; }

// ---------------------------------------------------------------- TokenStore

StatusOr<TokenStore> TokenStore::Parse(const std::string& text, const std::string& origin,
                                       std::vector<std::string>* warnings) {
  TokenStore store;
  std::map<std::string, size_t> names;  // name -> line
  std::vector<size_t> lines;            // line of each entry
  size_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto fields = Fields(line);
    if (fields.empty()) continue;
    const std::string where = origin + ":" + std::to_string(line_no) + ": ";
    // Messages below never quote the line: a field may be a token in the wrong place.
    if (fields.size() == 2) return InvalidArgument(where + "the token (third field) is empty or missing");
    if (fields.size() != 3) {
      return InvalidArgument(where + "expected '<name> <scopes> <token>' (3 fields separated by spaces), found " +
                             std::to_string(fields.size()) + " field(s)");
    }
    TokenEntry e;
    e.name = fields[0];
    if (!IsValidId(e.name, kMaxTokenNameBytes)) {
      return InvalidArgument(where + "the name (first field) must be 1 to " + std::to_string(kMaxTokenNameBytes) +
                             " of A-Z a-z 0-9 - _ .");
    }
    e.scopes = ParseScopes(fields[1]);
    if (e.scopes == 0) {
      return InvalidArgument(where + "unknown scope in the second field of token '" + e.name +
                             "' (expected compute, management or compute,management)");
    }
    if (auto it = names.find(e.name); it != names.end()) {
      return InvalidArgument(where + "duplicate name '" + e.name + "' (first on line " + std::to_string(it->second) +
                             ")");
    }
    e.digest = Sha256(fields[2]);
    for (size_t i = 0; i < store.entries_.size(); ++i) {
      if (CRYPTO_memcmp(store.entries_[i].digest.data(), e.digest.data(), e.digest.size()) == 0) {
        return InvalidArgument(where + "token '" + e.name + "' has the same value as token '" +
                               store.entries_[i].name + "' on line " + std::to_string(lines[i]));
      }
    }
    if (warnings && fields[2].size() < kShortToken) {
      warnings->push_back(where + "token '" + e.name + "' is shorter than " + std::to_string(kShortToken) +
                          " characters; use a long random value (openssl rand -hex 32)");
    }
    names.emplace(e.name, line_no);
    lines.push_back(line_no);
    store.entries_.push_back(std::move(e));
  }
  if (warnings && store.entries_.empty()) warnings->push_back(origin + ": lists no tokens");
  return store;
}

StatusOr<TokenStore> TokenStore::LoadFile(const std::string& path, std::vector<std::string>* warnings) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound(path + ": cannot open token file: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return InvalidArgument(path + ": not a regular file");
  }
  if (st.st_size > static_cast<off_t>(kMaxTokenFileBytes)) {
    close(fd);
    return InvalidArgument(path + ": larger than 1 MiB");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  close(fd);
  text.resize(got);
  if (warnings && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    warnings->push_back(path + ": group or others may access this token file (mode " + mode +
                        "); make it readable by the daemon's user only (chmod 0600)");
  }
  return Parse(text, path, warnings);
}

const TokenEntry* TokenStore::Find(std::string_view token) const {
  const auto digest = Sha256(token);
  uintptr_t found = 0;
  for (const auto& e : entries_) {
    const int differs = CRYPTO_memcmp(digest.data(), e.digest.data(), digest.size());
    const uintptr_t mask = static_cast<uintptr_t>(0) - static_cast<uintptr_t>(differs == 0);
    found |= mask & reinterpret_cast<uintptr_t>(&e);
  }
  return reinterpret_cast<const TokenEntry*>(found);
}

// ---------------------------------------------------------------- UnixPeerPolicy

StatusOr<UnixPeerPolicy> UnixPeerPolicy::FromConfig(const AuthConfig& auth) {
  UnixPeerPolicy p;
  std::map<gid_t, std::string> names;
  if (auth.management_unix_uids) {
    p.uids.insert(auth.management_unix_uids->begin(), auth.management_unix_uids->end());
  } else {
    p.uids = {0, geteuid()};
  }
  if (auth.management_unix_groups) {
    for (const auto& name : *auth.management_unix_groups) {
      std::vector<char> buf(16384);
      group gr{};
      group* found = nullptr;
      const int rc = getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found);
      if (rc != 0 || !found) {
        return InvalidArgument("server.auth.management_unix_groups: no group named '" + name + "'" +
                               (rc != 0 ? std::string(" (") + std::strerror(rc) + ")" : ""));
      }
      p.gids.insert(found->gr_gid);
      names[found->gr_gid] = name;
    }
  } else {
    p.gids.insert(getegid());
    names[getegid()] = GroupName(getegid());
  }
  p.description = Describe(p, names);
  return p;
}

bool UnixPeerPolicy::Allows(uid_t uid, gid_t gid) const {
  if (uids.count(uid) || gids.count(gid)) return true;
  if (gids.empty()) return false;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || !found) return false;
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &n) < 0) return false;
  }
  groups.resize(static_cast<size_t>(n));
  return std::any_of(groups.begin(), groups.end(), [&](gid_t g) { return gids.count(g) > 0; });
}

// ---------------------------------------------------------------- Authenticator

Authenticator::Authenticator() {
  auto p = std::make_shared<Policy>();
  p->tokens = std::make_shared<TokenStore>();
  p->unix_peers = UnixPeerPolicy::FromConfig(p->config).value();
  policy_ = std::move(p);
}

StatusOr<std::shared_ptr<const Authenticator::Policy>> Authenticator::Prepare(const AuthConfig& auth,
                                                                              std::vector<std::string>* warnings) {
  auto p = std::make_shared<Policy>();
  p->config = auth;
  if (auth.token_file.empty()) {
    p->tokens = std::make_shared<TokenStore>();
  } else {
    auto tokens = TokenStore::LoadFile(auth.token_file, warnings);
    if (!tokens.ok()) return tokens.status();
    p->tokens = std::make_shared<TokenStore>(std::move(tokens.value()));
  }
  auto peers = UnixPeerPolicy::FromConfig(auth);
  if (!peers.ok()) return peers.status();
  p->unix_peers = std::move(peers.value());
  return std::shared_ptr<const Policy>(std::move(p));
}

void Authenticator::Install(std::shared_ptr<const Policy> next) {
  const auto previous = policy();
  std::vector<std::string> added, removed;
  std::map<std::string, Sha256Digest> before;
  for (const auto& e : previous->tokens->entries()) before[e.name] = e.digest;
  for (const auto& e : next->tokens->entries()) {
    auto it = before.find(e.name);
    if (it == before.end()) {
      added.push_back(e.name);
    } else {
      if (it->second != e.digest) added.push_back(e.name + " (new value)");
      before.erase(it);
    }
  }
  for (const auto& [name, digest] : before) removed.push_back(name);
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  const auto& c = next->config;
  spdlog::info("auth: {} token(s){}; compute calls {}; TCP management calls {}; Unix management peers: {}",
               next->tokens->size(), c.token_file.empty() ? "" : " from " + c.token_file,
               c.compute == AuthMode::kToken ? "need a compute token" : "need no token",
               c.management == AuthMode::kToken ? "need a management token" : "need no token (auth.management: none)",
               next->unix_peers.description);
  if (!added.empty()) spdlog::info("auth: tokens added or changed: {}", join(added));
  if (!removed.empty()) spdlog::info("auth: tokens removed: {}", join(removed));
  std::atomic_store(&policy_, std::move(next));
}

bool Authenticator::AllowsUnixPeer(uid_t uid, gid_t gid) const { return policy()->unix_peers.Allows(uid, gid); }

bool Authenticator::compute_requires_token() const { return policy()->config.compute == AuthMode::kToken; }

grpc::Status Authenticator::Refuse(grpc::StatusCode code, const std::string& why, const grpc::ServerContextBase& ctx,
                                   Scope scope) const {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  int64_t next = next_warning_ns_.load(std::memory_order_relaxed);
  if (now >= next && next_warning_ns_.compare_exchange_strong(next, now + 1'000'000'000)) {
    const uint64_t quiet = quiet_refusals_.exchange(0);
    spdlog::warn("refused a {} call from {}: {}{}", ScopeName(scope), ctx.peer(), why,
                 quiet ? " (" + std::to_string(quiet) + " more refused since the last such line)" : "");
  } else {
    quiet_refusals_.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("refused a {} call from {}: {}", ScopeName(scope), ctx.peer(), why);
  }
  return grpc::Status(code, why);
}

grpc::Status Authenticator::Check(const grpc::ServerContextBase& ctx, Scope scope, Transport transport) const {
  const auto p = policy();
  const bool on_unix = transport == Transport::kCheckedUnixPeer;
  const bool required = scope == Scope::kCompute ? p->config.compute == AuthMode::kToken
                                                 : !on_unix && p->config.management == AuthMode::kToken;
  // A token sent where none is needed is ignored, except on the Unix management socket,
  // where a token that is sent must be good.
  const bool checked = required || (scope == Scope::kManagement && on_unix);
  if (!checked) return grpc::Status::OK;

  const auto& metadata = ctx.client_metadata();
  const auto range = metadata.equal_range("authorization");
  const auto count = std::distance(range.first, range.second);
  if (count == 0) {
    if (!required) return grpc::Status::OK;
    if (scope == Scope::kManagement && p->tokens->size() == 0) {
      return Refuse(grpc::StatusCode::UNAUTHENTICATED,
                    "management over TCP needs a token, and no token is configured: list one with the management "
                    "scope in server.auth.token_file and send it as 'authorization: Bearer <token>', use the Unix "
                    "management socket, or opt out with server.auth.management: none",
                    ctx, scope);
    }
    return Refuse(grpc::StatusCode::UNAUTHENTICATED,
                  std::string("missing 'authorization: Bearer <token>' metadata; ") + ScopeName(scope) +
                      " calls need a token",
                  ctx, scope);
  }
  if (count > 1) {
    return Refuse(grpc::StatusCode::UNAUTHENTICATED, "more than one authorization header", ctx, scope);
  }
  const std::string_view value(range.first->second.data(), range.first->second.size());
  constexpr std::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() || Lowercase(value.substr(0, kScheme.size())) != kScheme) {
    return Refuse(grpc::StatusCode::UNAUTHENTICATED, "malformed authorization header (expected 'Bearer <token>')",
                  ctx, scope);
  }
  std::string_view token = value.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  const TokenEntry* entry = p->tokens->Find(token);
  if (!entry) return Refuse(grpc::StatusCode::UNAUTHENTICATED, "unknown token", ctx, scope);
  if (!entry->Has(scope)) {
    return Refuse(grpc::StatusCode::PERMISSION_DENIED,
                  "token '" + entry->name + "' does not have the " + ScopeName(scope) + " scope", ctx, scope);
  }
  if (spdlog::should_log(spdlog::level::trace)) {
    spdlog::trace("{} call from {} with token '{}'", ScopeName(scope), ctx.peer(), entry->name);
  }
  return grpc::Status::OK;
}

}  // namespace splitlearnd
