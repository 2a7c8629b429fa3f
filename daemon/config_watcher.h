// ConfigWatcher: notices when the config file is saved and says so, once per burst.
//
// It watches the file's DIRECTORY with inotify, not the file: editors and tools
// often write a new file and rename it over the old one (and Kubernetes swaps a
// symlink), which a watch on the old inode would miss. Any event in the directory
// (re)starts a quiet period; when it ends, the file's stat fingerprint is compared
// with the last one seen and `on_change` runs only if it differs. So a burst of
// writes gives one call, and unrelated files in the directory give none.
//
// `on_change` runs on the watcher's own thread; it should only hand the work over
// (ConfigReloader::Request), not reload inline.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "common/status.h"
#include "manager/model_manager.h"

namespace splitlearnd {

class ConfigWatcher {
 public:
  ConfigWatcher(std::string path, std::chrono::milliseconds quiet_period, std::function<void()> on_change);
  ~ConfigWatcher();  // Stop()
  ConfigWatcher(const ConfigWatcher&) = delete;
  ConfigWatcher& operator=(const ConfigWatcher&) = delete;

  // `known`: the fingerprint of the file as it was last read. If the file differs
  // already (saved between that read and now), the first check comes at once.
  Status Start(const FileFingerprint& known);
  void Stop();
  bool running() const { return thread_.joinable(); }

 private:
  void Loop();
  // True when the file's fingerprint differs from the last one seen.
  bool Changed();

  const std::string path_;
  const std::chrono::milliseconds quiet_period_;
  const std::function<void()> on_change_;
  std::string dir_;
  std::string name_;
  int inotify_fd_ = -1;
  int wake_fd_ = -1;
  FileFingerprint last_;
  std::thread thread_;
};

}  // namespace splitlearnd
