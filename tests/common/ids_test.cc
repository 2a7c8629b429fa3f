// common/ids.h: the one character set of model ids and token names.
#include "common/ids.h"

#include <string>
#include <vector>

#include "tests/support/catch.h"

using namespace splitlearnd;

TEST_CASE("an id is 1 to max bytes of ASCII letters, digits, '-', '_' and '.'") {
  for (const std::string& good : std::vector<std::string>{"a", "T-v2_1.0", "0", "...", std::string(8, 'z')}) {
    INFO(good);
    CHECK(IsValidId(good, 8));
    CHECK(IdProblem(good, 8).empty());
  }
  CHECK_FALSE(IsValidId("", 8));
  CHECK_FALSE(IsValidId(std::string(9, 'z'), 8));
  CHECK(IdProblem(std::string(9, 'z'), 8) == "must be 1 to 8 characters");
  // Bytes that would change a path, a metric label or a log line, and letters beyond ASCII.
  for (const std::string& bad : std::vector<std::string>{"a b", "a/b", "a\\b", "a\"b", "a\nb", std::string("a\0b", 3), "caf\xc3\xa9", "a:b"}) {
    INFO(bad);
    CHECK_FALSE(IsValidId(bad, 128));
    CHECK(IdProblem(bad, 128) == "may contain only letters, digits, '-', '_' and '.'");
  }
}

TEST_CASE("a model's health service name is the one the daemon and its clients agree on") {
  CHECK(ModelHealthServiceName("trunk") == "splitlearn.model/trunk");
  CHECK(ModelHealthServiceName("") == "splitlearn.model/");
}
