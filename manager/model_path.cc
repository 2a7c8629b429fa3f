#include "manager/model_path.h"

#include <filesystem>

namespace splitlearnd {

namespace fs = std::filesystem;

namespace {

bool Inside(const fs::path& base, const fs::path& p) {
  const fs::path rel = p.lexically_relative(base);
  return !rel.empty() && rel != "." && *rel.begin() != "..";
}

}  // namespace

StatusOr<std::string> ResolveInsideRoot(const std::string& root, const std::string& requested) {
  if (requested.empty()) return InvalidArgument("the model path is empty");
  const fs::path p(requested);
  for (const auto& part : p) {
    if (part == "..") return InvalidArgument("model path '" + requested + "' contains '..'");
  }
  std::error_code ec;
  const fs::path root_real = fs::canonical(root, ec);
  if (ec) return FailedPrecondition("model_root " + root + " is not usable: " + ec.message());
  fs::path candidate;
  if (p.is_absolute()) {
    const fs::path norm = p.lexically_normal();
    if (!Inside(fs::path(root).lexically_normal(), norm) && !Inside(root_real, norm)) {
      return PermissionDenied("model path '" + requested + "' is outside model_root " + root);
    }
    candidate = norm;
  } else {
    candidate = root_real / p;
  }
  const fs::path real = fs::canonical(candidate, ec);
  if (ec) return NotFound("model file '" + requested + "' not found under model_root " + root);
  if (!Inside(root_real, real)) {
    return PermissionDenied("model path '" + requested + "' leads to " + real.string() + ", outside model_root " +
                            root);
  }
  if (!fs::is_regular_file(real, ec)) return InvalidArgument("model path '" + requested + "' is not a regular file");
  return real.string();
}

}  // namespace splitlearnd
