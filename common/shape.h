#pragma once
// Tensor shapes written as text, as command lines take them: "1x10x768".

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace splitlearnd {

// "1x10x768" -> {1, 10, 768}: one or more positive decimal dimensions separated by 'x',
// whose product fits in int64_t (so callers may multiply them). Anything else is
// INVALID_ARGUMENT quoting `text`.
StatusOr<std::vector<int64_t>> ParseShape(const std::string& text);

}  // namespace splitlearnd
