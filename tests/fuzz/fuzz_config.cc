// libFuzzer target: arbitrary bytes as the YAML config file.
//
// A temporary model_root holds one model file ("m.pt") so that inputs can get past the
// file check and reach the later validation. Whatever the bytes, ParseConfig must
// return a Status (never throw or crash), and a config it accepts must be complete.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.h"

namespace {

std::string* g_root = nullptr;

[[noreturn]] void Broken(const char* what) {
  std::fprintf(stderr, "config invariant broken: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/splitlearnd-fuzz-config-XXXXXX";
  if (!mkdtemp(tmpl)) return 0;
  g_root = new std::string(tmpl);
  std::ofstream(fs::path(*g_root) / "m.pt") << "not a model";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!g_root) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = splitlearnd::ParseConfig(text, "fuzz.yaml", *g_root);
  if (!config.ok()) {
    if (config.status().message().empty()) Broken("refusal without a message");
    return 0;
  }
  if (config->models.empty()) Broken("accepted a config without models");
  int defaults = 0;
  for (const auto& m : config->models) {
    if (m.id.empty() || m.id.size() > 128) Broken("model id length");
    if (!splitlearnd::IsValidDeviceName(m.device)) Broken("device name");
    if (!config->devices.count(m.device)) Broken("device without an entry");
    if (m.batching.max_batch_size < 1) Broken("max_batch_size");
    if (config->FindModel(m.id) != &m) Broken("duplicate id");
    defaults += m.is_default ? 1 : 0;
  }
  if (defaults > 1) Broken("two default models");
  if (config->server.max_tensor_elements < 1) Broken("max_tensor_elements");
  return 0;
}
