// ConfigReloader: the one reload path. SIGHUP, a saved config file and the
// ReloadConfig management call all end in Request().
//
// A reload parses and validates the whole file first; if it is invalid nothing
// changes, and the error is logged, kept for status and put in systemd's STATUS
// line. Otherwise ModelManager::Apply() brings the models to the new file and the
// reload waits (bounded) for the loads it started, so its report says what failed.
//
// Reloads run one at a time on the reloader's own thread, never on the main thread
// (which must keep sending watchdog pings) nor on a gRPC thread. A request that
// arrives while another is queued but not started shares it.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "daemon/notifier.h"
#include "manager/model_manager.h"
#include "manager/task_thread.h"

namespace splitlearnd {

struct ReloadReport {
  bool ok = true;            // false: invalid file, or a load it started failed
  bool config_valid = true;  // false: refused before anything changed
  std::string message;       // one line
  std::string trigger;
  std::string config_file;
  std::chrono::system_clock::time_point time;
  double seconds = 0;
  std::vector<std::string> added, changed, removed, updated;
  std::vector<std::string> failed;    // "id: error"
  std::vector<std::string> warnings;
};

class ConfigReloader {
 public:
  struct Options {
    std::string config_path;
    std::string listen_override;  // --listen: server.listen in the file is not used
    std::chrono::milliseconds load_wait{std::chrono::minutes(10)};
    // Runs once the file parsed, before any model changes: reads and puts in force what
    // the config only points to (TLS certificates, the token file). It must change
    // nothing when it fails; an error refuses the whole reload, as an invalid file does.
    std::function<Status(const Config& previous, const Config& next, std::vector<std::string>* warnings)>
        before_apply;
  };
  // Called on the reloader thread after every reload. For a refused (invalid) file
  // `next` is the config still in force, and report.config_valid is false.
  using AppliedHook = std::function<void(const Config& previous, const Config& next, const ReloadReport&)>;

  // `initial` is the config the daemon started with (already applied).
  // `initial_fingerprint`: of the file when `initial` was read from it.
  ConfigReloader(Options options, Config initial, FileFingerprint initial_fingerprint, ModelManager* manager,
                 SystemdNotifier* notifier, AppliedHook on_applied = {});
  ~ConfigReloader();  // Stop()

  std::shared_future<ReloadReport> Request(const std::string& trigger);

  // Until the daemon has told systemd READY=1 once, reloads send no notifications.
  void SetNotifying(bool on);
  void Stop();

  ReloadReport last() const;
  Config current() const;
  std::chrono::system_clock::time_point applied_at() const;
  // Of the config file as the last reload (or startup) read it.
  FileFingerprint read_fingerprint() const;

  // "3 model(s) ready, 1 failed (x)" — for STATUS lines and logs.
  static std::string Summary(const ModelManager& manager);

 private:
  struct Pending;
  ReloadReport Run(const std::string& trigger);
  std::vector<std::string> RestartOnlyChanges(const Config& previous, const Config& next) const;

  const Options options_;
  ModelManager* const manager_;
  SystemdNotifier* const notifier_;
  const AppliedHook on_applied_;

  mutable std::mutex mu_;
  Config current_;
  ReloadReport last_;
  std::chrono::system_clock::time_point applied_at_;
  FileFingerprint read_fingerprint_;
  std::shared_ptr<Pending> pending_;
  bool notifying_ = false;

  TaskThread thread_;  // last: stopped (and joined) before the members above go
};

}  // namespace splitlearnd
