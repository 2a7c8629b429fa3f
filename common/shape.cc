#include "common/shape.h"

#include <algorithm>
#include <charconv>
#include <limits>

namespace splitlearnd {

StatusOr<std::vector<int64_t>> ParseShape(const std::string& text) {
  auto bad = [&] {
    return InvalidArgument("bad shape '" + text + "': expected positive dimensions separated by x, like 1x10x768");
  };
  std::vector<int64_t> shape;
  int64_t elements = 1;
  size_t start = 0;
  while (true) {
    const size_t end = std::min(text.find('x', start), text.size());
    const char* first = text.data() + start;
    const char* last = text.data() + end;
    int64_t d = 0;
    // from_chars takes no sign, space or prefix: only digits get through.
    const auto [ptr, ec] = std::from_chars(first, last, d);
    if (first == last || ec != std::errc() || ptr != last || d < 1) return bad();
    if (elements > std::numeric_limits<int64_t>::max() / d) {
      return InvalidArgument("bad shape '" + text + "': more elements than fit in 64 bits");
    }
    elements *= d;
    shape.push_back(d);
    if (end == text.size()) break;
    start = end + 1;
  }
  return shape;
}

}  // namespace splitlearnd
