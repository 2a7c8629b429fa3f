#pragma once
// File helpers shared by every layer: writing a file so that readers see the old one or
// the new one and never half of one, and reading one whole.

#include <string>
#include <string_view>

#include <sys/types.h>

#include "common/status.h"

namespace splitlearnd {

// Makes `tmp` (already written and closed) the file at `path`: fsync `tmp`, rename it over
// `path`, fsync the folder, so a crash leaves the old file or the new one. On failure
// `tmp` is removed and `path` is as it was.
Status CommitFile(const std::string& tmp, const std::string& path);

// Writes `data` to `path` through `path` + ".tmp" and CommitFile, with permission bits
// `mode` (before the umask).
Status WriteFileAtomically(const std::string& path, std::string_view data, mode_t mode = 0644);

// WriteFileAtomically for a reader that notices a new file by its mtime in whole
// seconds (gRPC's certificate file watcher): when `path` exists, the new file's mtime is
// later than the old one's, even when both are written within one second.
Status WriteFileAtomicallyNewerMtime(const std::string& path, std::string_view data, mode_t mode);

// The whole file at `path`. Errors begin with `what`, what the file is for
// ("server.tls.cert_file: cannot open /etc/x.pem: No such file or directory").
StatusOr<std::string> ReadWholeFile(const std::string& what, const std::string& path);

}  // namespace splitlearnd
