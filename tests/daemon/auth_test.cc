// TokenStore parsing and lookup, and the Unix peer policy (no gRPC server needed).
#include "daemon/auth.h"

#include "tests/support/catch.h"
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

using namespace splitlearnd;

namespace {

StatusOr<TokenStore> Parse(const std::string& text, std::vector<std::string>* warnings = nullptr) {
  return TokenStore::Parse(text, "tokens", warnings);
}

const std::string kLongA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const std::string kLongB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

}  // namespace

TEST_CASE("a token file lists names, scopes and tokens, and skips comments and blank lines") {
  std::vector<std::string> warnings;
  auto store = Parse("# who may call\n\n  app compute " + kLongA + "\r\nops\tcompute,management\t" + kLongB +
                         "\n   # indented comment\nmgr management,compute cccccccccccccccccccc",
                     &warnings);
  REQUIRE(store.ok());
  CHECK(warnings.empty());
  REQUIRE(store->size() == 3);
  const TokenEntry* app = store->Find(kLongA);
  REQUIRE(app != nullptr);
  CHECK(app->name == "app");
  CHECK(app->Has(Scope::kCompute));
  CHECK_FALSE(app->Has(Scope::kManagement));
  const TokenEntry* ops = store->Find(kLongB);
  REQUIRE(ops != nullptr);
  CHECK(ops->name == "ops");
  CHECK(ops->Has(Scope::kCompute));
  CHECK(ops->Has(Scope::kManagement));
  CHECK(store->Find("cccccccccccccccccccc")->name == "mgr");
  CHECK(store->Find("") == nullptr);
  CHECK(store->Find(kLongA + "x") == nullptr);
  CHECK(store->Find(kLongA.substr(1)) == nullptr);
}

TEST_CASE("a comment may end a line: a field that begins with # and the rest") {
  auto store = Parse("app compute " + kLongA + "   # the training client\nops management " + kLongB + " #no space\n");
  INFO(store.status().ToString());
  REQUIRE(store.ok());
  REQUIRE(store->size() == 2);
  CHECK(store->Find(kLongA)->name == "app");
  CHECK(store->Find(kLongB)->name == "ops");
  // Only whitespace separates a comment: a token that merely holds a # keeps it.
  auto hash = Parse("app compute " + kLongA + "#x\n");
  REQUIRE(hash.ok());
  CHECK(hash->Find(kLongA + "#x") != nullptr);
}

TEST_CASE("the token file of docs/security.md parses as written") {
  std::ifstream doc(SPLITLEARND_SECURITY_DOC);
  REQUIRE(doc.good());
  // The fenced block right after the sentence that names the token file.
  std::string line, block;
  bool after = false, inside = false;
  while (std::getline(doc, line)) {
    if (!after) {
      after = line.find("`/etc/splitlearnd/tokens` (owner") != std::string::npos;
      continue;
    }
    if (line.rfind("```", 0) == 0) {
      if (inside) break;
      inside = true;
      continue;
    }
    if (inside) block += line + "\n";
  }
  REQUIRE_FALSE(block.empty());
  std::vector<std::string> warnings;
  auto store = Parse(block, &warnings);
  INFO(block << store.status().ToString());
  REQUIRE(store.ok());
  CHECK(store->size() == 3);
  CHECK(warnings.size() == 3);  // the example's tokens are elided, so short
}

TEST_CASE("token file errors name the line and never quote it") {
  const std::string secret = "s3cr3t-value-that-must-not-leak";
  auto error = [&](const std::string& text) {
    auto store = Parse(text);
    REQUIRE_FALSE(store.ok());
    CHECK(store.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(store.status().message(), !Catch::Contains(secret));
    return store.status().message();
  };
  CHECK_THAT(error("\napp compute\n"), Catch::StartsWith("tokens:2: ") && Catch::Contains("empty or missing"));
  CHECK_THAT(error("app compute " + secret + " extra\n"), Catch::StartsWith("tokens:1: ") && Catch::Contains("3 fields"));
  CHECK_THAT(error(secret + "\n"), Catch::StartsWith("tokens:1: ") && Catch::Contains("3 fields"));
  CHECK_THAT(error("app " + secret + " compute\n"), Catch::StartsWith("tokens:1: ") && Catch::Contains("unknown scope"));
  CHECK_THAT(error("app compute,admin " + secret + "\n"), Catch::Contains("unknown scope"));
  CHECK_THAT(error("app compute, " + secret + "\n"), Catch::Contains("unknown scope"));
  CHECK_THAT(error("a/b compute " + secret + "\n"), Catch::StartsWith("tokens:1: ") && Catch::Contains("name"));
  CHECK_THAT(error("app compute " + kLongA + "\n#\napp management " + secret + "\n"),
             Catch::StartsWith("tokens:3: ") && Catch::Contains("duplicate name 'app'") && Catch::Contains("line 1"));
  CHECK_THAT(error("app compute " + secret + "\nother management " + secret + "\n"),
             Catch::StartsWith("tokens:2: ") && Catch::Contains("same value") && Catch::Contains("'app'"));
}

TEST_CASE("short tokens and an empty file load with warnings") {
  std::vector<std::string> warnings;
  auto store = Parse("app compute tiny-tok\n", &warnings);
  REQUIRE(store.ok());
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Catch::Contains("'app'") && Catch::Contains("shorter") && !Catch::Contains("tiny-tok"));
  warnings.clear();
  auto empty = Parse("# nothing yet\n", &warnings);
  REQUIRE(empty.ok());
  CHECK(empty->size() == 0);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Catch::Contains("no tokens"));
}

TEST_CASE("a token file readable by others loads with a warning, and a missing one is NOT_FOUND") {
  char tmpl[] = "/tmp/slauthXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string path = std::string(tmpl) + "/tokens";
  std::ofstream(path) << "app compute " << kLongA << "\n";
  std::vector<std::string> warnings;
  REQUIRE(chmod(path.c_str(), 0600) == 0);
  REQUIRE(TokenStore::LoadFile(path, &warnings).ok());
  CHECK(warnings.empty());
  REQUIRE(chmod(path.c_str(), 0644) == 0);
  auto store = TokenStore::LoadFile(path, &warnings);
  REQUIRE(store.ok());
  CHECK(store->Find(kLongA) != nullptr);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Catch::Contains("0644") && Catch::Contains("chmod 0600"));
  auto missing = TokenStore::LoadFile(std::string(tmpl) + "/nope", nullptr);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK_THAT(missing.status().message(), Catch::Contains("/nope"));
  unlink(path.c_str());
  rmdir(tmpl);
}

TEST_CASE("Unix peer policy: defaults, explicit lists, unknown groups") {
  auto defaults = UnixPeerPolicy::FromConfig(AuthConfig{});
  REQUIRE(defaults.ok());
  CHECK(defaults->Allows(0, 12345));
  CHECK(defaults->Allows(geteuid(), 12345));
  CHECK(defaults->Allows(54321, getegid()));  // the daemon's primary group

  AuthConfig none;
  none.management_unix_uids.emplace();
  none.management_unix_groups.emplace();
  auto closed = UnixPeerPolicy::FromConfig(none);
  REQUIRE(closed.ok());
  CHECK_FALSE(closed->Allows(0, 0));
  CHECK_FALSE(closed->Allows(geteuid(), getegid()));

  AuthConfig listed;
  listed.management_unix_uids = std::vector<uint32_t>{4242};
  listed.management_unix_groups = std::vector<std::string>{"root"};
  auto some = UnixPeerPolicy::FromConfig(listed);
  REQUIRE(some.ok());
  CHECK(some->Allows(4242, 4242));
  CHECK(some->Allows(4243, 0));  // gid 0 is root's group
  CHECK(some->Allows(0, 4242));  // root's primary group is root
  CHECK_FALSE(some->Allows(4243, 4243));

  AuthConfig unknown;
  unknown.management_unix_groups = std::vector<std::string>{"no-such-group-splitlearnd"};
  auto bad = UnixPeerPolicy::FromConfig(unknown);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("no-such-group-splitlearnd"));
}
