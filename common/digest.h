#pragma once
// What a file's (or a string's) bytes are: lower-case hex, SHA-256, and a stat(2)
// fingerprint that notices a changed file without reading it.
//
// Callers: auth (token digests), the model manager and the daemon's reloader and
// config watcher (fingerprints), the TorchScript adapter and main() (file digests for
// sha256 pins and "same bytes" reloads).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace splitlearnd {

// Two lower-case hex digits per byte.
std::string HexEncode(std::string_view bytes);

using Sha256Digest = std::array<unsigned char, 32>;
Sha256Digest Sha256(std::string_view data);

// Lower-case hex SHA-256 of the file at `path` (read in 1 MiB pieces). NOT_FOUND when
// it cannot be opened, INTERNAL when a read fails.
StatusOr<std::string> FileSha256(const std::string& path);

// Identity of a file's bytes as far as stat(2) can tell: a rename over the file, an
// in-place rewrite or a new symlink target all change it.
struct FileFingerprint {
  bool exists = false;
  uint64_t device = 0;
  uint64_t inode = 0;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileFingerprint& o) const {
    return exists == o.exists && device == o.device && inode == o.inode && size == o.size && mtime_ns == o.mtime_ns;
  }
  bool operator!=(const FileFingerprint& o) const { return !(*this == o); }
};
// The fingerprint of `path` (following symlinks); `exists` false when stat fails.
FileFingerprint FingerprintFile(const std::string& path);

}  // namespace splitlearnd
