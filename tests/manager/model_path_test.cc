// ResolveInsideRoot: the model paths the management API may load. Built into
// model_manager_test, whose test names it keeps.
#include "manager/model_path.h"

#include "tests/support/catch.h"

#include <filesystem>
#include <string>

#include "tests/support/temp_dir.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
namespace fs = std::filesystem;

TEST_CASE("model paths resolve inside model_root only") {
  TempDir root;
  TempDir outside;
  root.Write("ok.pt", "x");
  root.Write("sub/deep.pt", "x");
  const std::string secret = outside.Write("secret.pt", "x");
  fs::create_symlink(secret, root.path / "escape.pt");
  fs::create_symlink(outside.path, root.path / "escape-dir");
  fs::create_symlink(root.path / "ok.pt", root.path / "alias.pt");
  const std::string r = root.path.string();

  CHECK(ResolveInsideRoot(r, "ok.pt").value() == fs::canonical(root.path / "ok.pt").string());
  CHECK(ResolveInsideRoot(r, "sub/deep.pt").ok());
  CHECK(ResolveInsideRoot(r, (root.path / "ok.pt").string()).ok());
  CHECK(ResolveInsideRoot(r, "alias.pt").value() == fs::canonical(root.path / "ok.pt").string());

  CHECK(ResolveInsideRoot(r, "../secret.pt").status().code() == StatusCode::kInvalidArgument);
  CHECK(ResolveInsideRoot(r, "sub/../../x.pt").status().code() == StatusCode::kInvalidArgument);
  CHECK(ResolveInsideRoot(r, secret).status().code() == StatusCode::kPermissionDenied);
  CHECK(ResolveInsideRoot(r, "/etc/passwd").status().code() == StatusCode::kPermissionDenied);
  CHECK(ResolveInsideRoot(r, "escape.pt").status().code() == StatusCode::kPermissionDenied);
  CHECK(ResolveInsideRoot(r, "escape-dir/secret.pt").status().code() == StatusCode::kPermissionDenied);
  CHECK(ResolveInsideRoot(r, "missing.pt").status().code() == StatusCode::kNotFound);
  CHECK(ResolveInsideRoot(r, "sub").status().code() == StatusCode::kInvalidArgument);
  CHECK(ResolveInsideRoot(r, "").status().code() == StatusCode::kInvalidArgument);
}
