// common/digest.h: hex, SHA-256 of bytes and of files, and stat fingerprints.
#include "common/digest.h"

#include <cstdio>
#include <string>

#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

using namespace splitlearnd;

namespace {

constexpr const char* kAbcSha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string Hex(const Sha256Digest& d) {
  return HexEncode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

}  // namespace

TEST_CASE("HexEncode writes two lower-case digits per byte") {
  CHECK(HexEncode("") == "");
  CHECK(HexEncode(std::string("\x00\x0f\x10\xab\xff", 5)) == "000f10abff");
}

TEST_CASE("SHA-256 of bytes and of a file agree with the standard's test vector") {
  CHECK(Hex(Sha256("abc")) == kAbcSha256);
  testing::TempDir dir;
  CHECK(FileSha256(dir.Write("abc", "abc")).value() == kAbcSha256);
  // Longer than one read (1 MiB), with a partial last piece.
  std::string big((2 << 20) + 3, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  CHECK(FileSha256(dir.Write("big", big)).value() == Hex(Sha256(big)));
  auto missing = FileSha256(dir / "missing");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

TEST_CASE("a file's fingerprint changes when its bytes are replaced") {
  testing::TempDir dir;
  const std::string path = dir / "f";
  CHECK_FALSE(FingerprintFile(path).exists);
  dir.Write("f", "one");
  const FileFingerprint first = FingerprintFile(path);
  CHECK(first.exists);
  CHECK(first.size == 3);
  CHECK(FingerprintFile(path) == first);
  // A new file renamed over the old one: another inode, whatever the clock says.
  dir.Write("g", "two");
  REQUIRE(std::rename((dir / "g").c_str(), path.c_str()) == 0);
  CHECK(FingerprintFile(path) != first);
}
