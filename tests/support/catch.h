// The one place that knows which Catch2 the tests build against: Catch2 2 (Debian 12,
// a single header) or Catch2 3 (Debian 13, split headers). Tests include this instead
// of a Catch2 header and use the spellings of Catch2 2 (`Approx`, `Catch::Contains`,
// `Catch::StartsWith`, `Catch::Matches`), which Catch2 3 names differently.
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>

#include <string>

using Catch::Approx;
namespace Catch {
inline Matchers::StringContainsMatcher Contains(const std::string& s, CaseSensitive cs = CaseSensitive::Yes) {
  return Matchers::ContainsSubstring(s, cs);
}
using Matchers::Matches;
using Matchers::StartsWith;
}  // namespace Catch
#else
#include <catch2/catch.hpp>
#endif
