#include "daemon/config_watcher.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace splitlearnd {

ConfigWatcher::ConfigWatcher(std::string path, std::chrono::milliseconds quiet_period, std::function<void()> on_change)
    : path_(std::move(path)), quiet_period_(quiet_period), on_change_(std::move(on_change)) {
  const std::filesystem::path p = std::filesystem::absolute(path_);
  dir_ = p.parent_path().string();
  name_ = p.filename().string();
}

ConfigWatcher::~ConfigWatcher() { Stop(); }

Status ConfigWatcher::Start(const FileFingerprint& known) {
  if (thread_.joinable()) return Status::Ok();
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) return Internal(std::string("inotify_init1: ") + std::strerror(errno));
  constexpr uint32_t kMask = IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                             IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF;
  if (inotify_add_watch(inotify_fd_, dir_.c_str(), kMask) < 0) {
    const std::string why = std::strerror(errno);
    close(inotify_fd_);
    inotify_fd_ = -1;
    return Internal("cannot watch " + dir_ + ": " + why);
  }
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    close(inotify_fd_);
    inotify_fd_ = -1;
    return Internal(std::string("eventfd: ") + std::strerror(errno));
  }
  last_ = known;
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

void ConfigWatcher::Stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof one) < 0) {
      // The thread notices nothing; it still exits at its next event. Not expected.
    }
    thread_.join();
  }
  if (inotify_fd_ >= 0) close(inotify_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  inotify_fd_ = wake_fd_ = -1;
}

bool ConfigWatcher::Changed() {
  const FileFingerprint now = FingerprintFile(path_);
  if (now == last_) return false;
  const bool was_there = last_.exists;
  last_ = now;
  // A deleted file is not a config to load; its re-creation will be.
  if (!now.exists && was_there) {
    spdlog::warn("config file {} was deleted; still serving the last config loaded, and a new file at that path "
                 "will be loaded when it is saved", path_);
  }
  return now.exists;
}

void ConfigWatcher::Loop() {
  using Clock = std::chrono::steady_clock;
  bool pending = FingerprintFile(path_) != last_;  // saved before we started watching
  Clock::time_point due = Clock::now();
  alignas(inotify_event) char buf[4096];
  while (true) {
    int timeout_ms = -1;
    if (pending) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(due - Clock::now()).count();
      timeout_ms = left > 0 ? static_cast<int>(left) : 0;
    }
    pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int n = poll(fds, 2, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("config watcher: poll: {}; no longer watching {}", std::strerror(errno), path_);
      return;
    }
    if (fds[1].revents & POLLIN) return;
    if (fds[0].revents & POLLIN) {
      while (true) {
        const ssize_t len = read(inotify_fd_, buf, sizeof buf);
        if (len <= 0) break;
        for (char* p = buf; p < buf + len;) {
          const auto* ev = reinterpret_cast<const inotify_event*>(p);
          if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
            spdlog::warn("config watcher: directory {} was removed or moved; saving the file no longer reloads "
                         "(SIGHUP and ReloadConfig still do)", dir_);
          }
          p += sizeof(inotify_event) + ev->len;
        }
      }
      // Every event (re)starts the quiet period: one reload per burst.
      pending = true;
      due = Clock::now() + quiet_period_;
      continue;
    }
    if (pending && Clock::now() >= due) {
      pending = false;
      if (Changed()) {
        spdlog::info("config file {} changed on disk", path_);
        on_change_();
      }
    }
  }
}

}  // namespace splitlearnd
