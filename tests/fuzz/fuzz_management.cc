// libFuzzer target: arbitrary bytes as a LoadModelRequest, through the checks the
// management service runs before it loads a file by path (ModelForLoadPath).
//
// A temporary tree gives the checks something real to resolve: model_root with a model
// file, a sub-folder, a symlink that stays inside and two that lead out, and a
// "secret" file next to model_root. No accepted request may name a file outside
// model_root.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "daemon/management_service.h"

namespace {

namespace fs = std::filesystem;

splitlearnd::Config* g_config = nullptr;
std::string* g_root_real = nullptr;

[[noreturn]] void Broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "management invariant broken: %s (%s)\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in strings is logged otherwise
  char tmpl[] = "/tmp/splitlearnd-fuzz-manage-XXXXXX";
  if (!mkdtemp(tmpl)) return 0;
  const fs::path top(tmpl);
  const fs::path root = top / "models";
  fs::create_directories(root / "sub");
  std::ofstream(root / "ok.pt") << "x";
  std::ofstream(root / "sub" / "deep.pt") << "x";
  std::ofstream(top / "secret.pt") << "x";
  std::error_code ec;
  fs::create_symlink(root / "ok.pt", root / "alias.pt", ec);
  fs::create_symlink(top / "secret.pt", root / "escape.pt", ec);
  fs::create_directory_symlink(top, root / "escape-dir", ec);
  g_config = new splitlearnd::Config();
  g_config->model_root = root.string();
  splitlearnd::ModelConfig existing;
  existing.id = "configured";
  existing.path = (root / "ok.pt").string();
  g_config->models.push_back(existing);
  g_root_real = new std::string(fs::canonical(root).string());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!g_config) return 0;
  splitlearn::manage::LoadModelRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto model = splitlearnd::ModelForLoadPath(*g_config, req);
  if (!model.ok()) {
    if (model.status().message().empty()) Broken("refusal without a message", req.path());
    return 0;
  }
  const std::string& path = model->path;
  if (path.rfind(*g_root_real + "/", 0) != 0) Broken("accepted a path outside model_root", path);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) Broken("accepted something that is not a file", path);
  if (fs::canonical(path, ec).string() != path) Broken("path not canonical", path);
  if (model->id.empty() || model->id == "configured") Broken("bad id", model->id);
  if (!splitlearnd::IsValidDeviceName(model->device)) Broken("bad device", model->device);
  return 0;
}
