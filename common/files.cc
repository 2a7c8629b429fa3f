#include "common/files.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace splitlearnd {
namespace {

std::string Folder(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

Status Fail(const std::string& what, const std::string& tmp, int err) {
  ::unlink(tmp.c_str());
  return Internal(what + ": " + std::strerror(err));
}

}  // namespace

Status CommitFile(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Fail("cannot reopen " + tmp, tmp, errno);
  const bool synced = ::fsync(fd) == 0;
  const int sync_err = errno;
  ::close(fd);
  if (!synced) return Fail("fsync of " + tmp + " failed", tmp, sync_err);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Fail("rename to " + path + " failed", tmp, errno);
  // The rename is durable once the folder is; a folder we cannot open for that (rare)
  // still has the new file, only not yet on disk.
  const int dfd = ::open(Folder(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

namespace {

// Writes `path` + ".tmp" and commits it; `min_mtime` (seconds), when set, is the
// earliest mtime the new file may have.
Status WriteAndCommit(const std::string& path, std::string_view data, mode_t mode, std::optional<time_t> min_mtime) {
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return Internal("cannot write " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return Fail("cannot write " + tmp, tmp, err);
    }
    done += static_cast<size_t>(n);
  }
  if (min_mtime && std::time(nullptr) < *min_mtime) {
    const timespec times[2] = {{0, UTIME_OMIT}, {*min_mtime, 0}};
    ::futimens(fd, times);
  }
  if (::close(fd) != 0) return Fail("cannot write " + tmp, tmp, errno);
  return CommitFile(tmp, path);
}

}  // namespace

Status WriteFileAtomically(const std::string& path, std::string_view data, mode_t mode) {
  return WriteAndCommit(path, data, mode, std::nullopt);
}

Status WriteFileAtomicallyNewerMtime(const std::string& path, std::string_view data, mode_t mode) {
  struct stat old {};
  if (::stat(path.c_str(), &old) != 0) return WriteAndCommit(path, data, mode, std::nullopt);
  return WriteAndCommit(path, data, mode, old.st_mtime + 1);
}

StatusOr<std::string> ReadWholeFile(const std::string& what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(what + ": cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Internal(what + ": cannot read " + path);
  return text.str();
}

}  // namespace splitlearnd
