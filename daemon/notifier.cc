#include "daemon/notifier.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdlib>

namespace splitlearnd {
namespace {

// One line, and short enough to read in `systemctl status`.
std::string OneLine(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) out += (c == '\n' || c == '\r') ? ' ' : c;
  if (out.size() > 400) out = out.substr(0, 397) + "...";
  return out;
}

}  // namespace

SystemdNotifier::SystemdNotifier() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  enabled_ = socket != nullptr && socket[0] != '\0';
  uint64_t usec = 0;
  if (enabled_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_interval_ = std::chrono::microseconds(usec / 2);
  }
}

void SystemdNotifier::Send(const std::string& message) {
  if (enabled_) sd_notify(0, message.c_str());
}

void SystemdNotifier::Ready(const std::string& status) { Send("READY=1\nSTATUS=" + OneLine(status)); }

void SystemdNotifier::Reloading(const std::string& status) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t usec = static_cast<uint64_t>(ts.tv_sec) * 1000000ULL + static_cast<uint64_t>(ts.tv_nsec) / 1000ULL;
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\nSTATUS=" + OneLine(status));
}

void SystemdNotifier::Stopping(const std::string& status) { Send("STOPPING=1\nSTATUS=" + OneLine(status)); }
void SystemdNotifier::Status(const std::string& status) { Send("STATUS=" + OneLine(status)); }
void SystemdNotifier::Watchdog() { Send("WATCHDOG=1"); }

}  // namespace splitlearnd
