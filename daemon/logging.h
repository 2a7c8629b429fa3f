// Logging set-up. Under systemd (JOURNAL_STREAM set) lines carry a syslog priority
// prefix ("<6>") and no timestamp, so journald keeps levels and adds its own time.
#pragma once

#include <string>

#include "common/status.h"

namespace splitlearnd {

enum class LogFormat { kAuto, kText, kJournal, kJson };

// `level`: trace, debug, info, warn, error, critical, off.
Status SetupLogging(const std::string& level, LogFormat format);
Status SetLogLevel(const std::string& level);
bool UnderJournal();

}  // namespace splitlearnd
