#include "common/ids.h"

#include <algorithm>

namespace splitlearnd {
namespace {

bool IdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.';
}

}  // namespace

bool IsValidId(std::string_view id, size_t max_bytes) { return IdProblem(id, max_bytes).empty(); }

std::string IdProblem(std::string_view id, size_t max_bytes) {
  if (id.empty() || id.size() > max_bytes) return "must be 1 to " + std::to_string(max_bytes) + " characters";
  if (!std::all_of(id.begin(), id.end(), IdChar)) return "may contain only letters, digits, '-', '_' and '.'";
  return "";
}

std::string ModelHealthServiceName(const std::string& model_id) { return "splitlearn.model/" + model_id; }

}  // namespace splitlearnd
