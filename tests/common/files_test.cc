// common/files.h: atomic writes and whole-file reads.
#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <ctime>
#include <filesystem>
#include <string>

#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

using namespace splitlearnd;

namespace {

struct stat Stat(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st;
}

}  // namespace

TEST_CASE("WriteFileAtomically replaces a file whole and leaves no temporary file") {
  testing::TempDir dir;
  const std::string path = dir / "f";
  REQUIRE(WriteFileAtomically(path, "first", 0600).ok());
  REQUIRE(WriteFileAtomically(path, std::string("sec\0nd", 6), 0600).ok());
  CHECK(ReadWholeFile("f", path).value() == std::string("sec\0nd", 6));
  CHECK((Stat(path).st_mode & 077) == 0);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
  CHECK_FALSE(WriteFileAtomically(dir / "no/such/folder/f", "x").ok());
}

TEST_CASE("WriteFileAtomicallyNewerMtime gives the new file an mtime after the old one's") {
  testing::TempDir dir;
  const std::string path = dir / "identity.pem";
  REQUIRE(WriteFileAtomicallyNewerMtime(path, "old", 0600).ok());  // no old file: written as is
  // An old file whose mtime is ahead of the clock stands for one written in this very
  // second: the new one must still read as newer to a watcher comparing whole seconds.
  const time_t ahead = std::time(nullptr) + 1000;
  const timespec times[2] = {{0, UTIME_OMIT}, {ahead, 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
  REQUIRE(WriteFileAtomicallyNewerMtime(path, "new", 0600).ok());
  CHECK(ReadWholeFile("pem", path).value() == "new");
  CHECK(Stat(path).st_mtime == ahead + 1);
  CHECK((Stat(path).st_mode & 077) == 0);
}

TEST_CASE("ReadWholeFile names what the file is for when it cannot be read") {
  testing::TempDir dir;
  CHECK(ReadWholeFile("x", dir.Write("empty", "")).value().empty());
  auto missing = ReadWholeFile("server.tls.cert_file", dir / "missing.pem");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK_THAT(missing.status().message(),
             Catch::StartsWith("server.tls.cert_file: cannot open " + (dir / "missing.pem")));
}
