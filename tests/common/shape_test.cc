// common/shape.h: shapes written as text.
#include "common/shape.h"

#include "tests/support/catch.h"

using namespace splitlearnd;

TEST_CASE("a shape parses into its dimensions") {
  auto s = ParseShape("1x10x768");
  REQUIRE(s.ok());
  CHECK(*s == std::vector<int64_t>{1, 10, 768});
  auto one = ParseShape("5");
  REQUIRE(one.ok());
  CHECK(*one == std::vector<int64_t>{5});
  auto big = ParseShape("3037000499x3037000499");  // just under 2^63 elements
  REQUIRE(big.ok());
}

TEST_CASE("a malformed shape is INVALID_ARGUMENT quoting it") {
  const char* bad = GENERATE("", "x", "1x", "x1", "1xx2", "0x3", "-1x2", "+1", " 1", "1 ", "1x2a", "1.5", "2X3",
                             "9223372036854775808", "4294967296x4294967296");
  INFO("shape: '" << bad << "'");
  auto s = ParseShape(bad);
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.status().message(), Catch::Contains("'" + std::string(bad) + "'"));
}
