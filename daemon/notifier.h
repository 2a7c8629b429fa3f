// systemd's notification protocol (sd_notify). Does nothing when NOTIFY_SOCKET is
// unset, so the daemon behaves the same in a terminal and under systemd.
//
// Thread-safe: each message is one datagram. Status texts are flattened to one line
// (a newline would start a new assignment in the protocol).
#pragma once

#include <chrono>
#include <string>

namespace splitlearnd {

class SystemdNotifier {
 public:
  SystemdNotifier();
  bool enabled() const { return enabled_; }
  void Ready(const std::string& status);
  void Reloading(const std::string& status);
  void Stopping(const std::string& status);
  void Status(const std::string& status);
  void Watchdog();
  // How often to send WATCHDOG=1 (half the unit's WatchdogSec); zero when off.
  std::chrono::microseconds watchdog_interval() const { return watchdog_interval_; }

 private:
  void Send(const std::string& message);
  bool enabled_ = false;
  std::chrono::microseconds watchdog_interval_{0};
};

}  // namespace splitlearnd
