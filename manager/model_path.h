// Where a model file named through the management API may come from: model_root and
// nothing outside it, symlinks followed.
#pragma once

#include <string>

#include "common/status.h"

namespace splitlearnd {

// Resolves `requested` (relative to `root`, or absolute) to a real path inside `root`.
// INVALID_ARGUMENT for an empty path or one with a ".." component; PERMISSION_DENIED
// for an absolute path outside the root or a symlink that leads out of it; NOT_FOUND
// when it does not exist; INVALID_ARGUMENT when it is not a regular file.
StatusOr<std::string> ResolveInsideRoot(const std::string& root, const std::string& requested);

}  // namespace splitlearnd
