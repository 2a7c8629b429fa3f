// See errors.h.
#include "manager/torchscript/errors.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>

#include <spdlog/spdlog.h>

#include <regex>
#include <sstream>
#include <vector>

namespace splitlearnd {
namespace {

bool IsBlank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

std::string CauseLine(const std::string& what) {
  const auto lines = Lines(what);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    // libtorch 2.x may end a message with where in its own sources it was raised.
    if (IsBlank(*it) || it->rfind("Exception raised from ", 0) == 0) continue;
    const size_t start = it->find_first_not_of(" \t");
    const size_t end = it->find_last_not_of(" \t\r");
    return it->substr(start, end + 1 - start);
  }
  return "";
}

Status ModelError(const std::string& what, bool raised_by_model) {
  const std::string cause = CauseLine(what);
  const std::string msg = what.size() > 2000 ? what.substr(0, 2000) + "... " + cause : what;
  // The input's fault only when the cause says so (not when the traceback's source code
  // happens to mention a shape).
  static const char* kShapeHints[] = {"shape", "size mismatch", "must match the size", "cannot be multiplied",
                                      "dimension", "Expected", "expected", "out of range", "dtype", "scalar type"};
  if (!raised_by_model) {
    for (const char* hint : kShapeHints) {
      if (cause.find(hint) != std::string::npos) return InvalidArgument("model rejected the input: " + msg);
    }
  }
  return Internal("model failed: " + msg);
}

std::string ArchiveProducer(const std::string& file) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(file);
    // PyTorch 1.x never writes these records; 2.x writes both.
    if (reader.hasRecord("byteorder") || reader.hasRecord(".data/serialization_id")) return "PyTorch 2.x";
  } catch (const std::exception&) {
    // Not a readable archive: the load error says so.
  }
  return "";
}

Status TorchScriptLoadError(const std::string& file, const std::string& what) {
  spdlog::debug("loading {} failed; libtorch said: {}", file, what);
  static const std::regex kUnknownOp(R"(Unknown builtin op: ([A-Za-z0-9_:.]+?)\.?\s)");
  std::smatch m;
  if (std::regex_search(what, m, kUnknownOp)) {
    const std::string producer = ArchiveProducer(file);
    std::ostringstream os;
    os << "cannot load TorchScript file " << file << ": it calls " << m[1].str()
       << ", which this libtorch (" << TORCH_VERSION << ") does not have; the file was written by "
       << (producer.empty() ? "a newer PyTorch" : producer + " (so its archive says)")
       << ". Serve it with splitlearnd built on libtorch 2.x (docs/building.md), or save the model again"
       << " with the PyTorch that matches this libtorch";
    return InvalidArgument(os.str());
  }
  std::string first;
  for (const auto& line : Lines(what)) {
    if (!IsBlank(line)) { first = line; break; }
  }
  const std::string cause = CauseLine(what);
  std::string text = first == cause || cause.empty() ? first : first + " ... " + cause;
  if (text.size() > 600) text = text.substr(0, 600) + "...";
  return InvalidArgument("cannot load TorchScript file " + file + ": " + text);
}

}  // namespace splitlearnd
