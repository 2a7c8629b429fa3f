#include "common/cpus.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace splitlearnd {
namespace {

constexpr int kMaxCpu = 1023;  // CPU_SETSIZE - 1

bool ParseInt(const std::string& s, int* out) {
  if (s.empty() || s.size() > 4) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

Status Pin(pthread_t thread, const std::vector<int>& cpus) {
  const std::vector<int>& use = cpus.empty() ? AllowedCpus() : cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : use) {
    if (c < 0 || c > kMaxCpu) return InvalidArgument("CPU " + std::to_string(c) + " is out of range");
    CPU_SET(c, &set);
  }
  if (const int rc = pthread_setaffinity_np(thread, sizeof set, &set); rc != 0) {
    return Internal("cannot pin a thread to CPUs " + FormatCpuList(use) + ": " + std::strerror(rc));
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<int>> ParseCpuList(const std::string& text) {
  std::vector<bool> listed(kMaxCpu + 1, false);  // linear in the text, however many ranges repeat
  if (text.empty()) return InvalidArgument("empty CPU list");
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    std::string part = text.substr(pos, comma - pos);
    part.erase(0, part.find_first_not_of(' '));
    part.erase(part.find_last_not_of(' ') + 1);
    const size_t dash = part.find('-');
    int lo = 0, hi = 0;
    const bool ok = dash == std::string::npos ? ParseInt(part, &lo) && ParseInt(part, &hi)
                                              : ParseInt(part.substr(0, dash), &lo) && ParseInt(part.substr(dash + 1), &hi);
    if (!ok || lo > hi) return InvalidArgument("'" + part + "' is not a CPU or a range of CPUs (e.g. 1 or 0-3)");
    if (hi > kMaxCpu) return InvalidArgument("CPU " + std::to_string(hi) + " is out of range (0-" + std::to_string(kMaxCpu) + ")");
    for (int c = lo; c <= hi; ++c) listed[static_cast<size_t>(c)] = true;
    pos = comma + 1;
  }
  std::vector<int> cpus;
  for (int c = 0; c <= kMaxCpu; ++c) {
    if (listed[static_cast<size_t>(c)]) cpus.push_back(c);
  }
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> AllowedCpus() {
  // Taken once, on first use (early in main, before any thread is pinned), so that
  // "every CPU" keeps meaning the set the process was started with.
  static const std::vector<int> allowed = [] {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
      for (int c = 0; c <= kMaxCpu; ++c) {
        if (CPU_ISSET(c, &set)) cpus.push_back(c);
      }
    }
    return cpus;
  }();
  return allowed;
}

Status CheckCpusAllowed(const std::vector<int>& cpus, const std::string& what) {
  const std::vector<int> allowed = AllowedCpus();
  std::vector<int> missing;
  for (int c : cpus) {
    if (!std::binary_search(allowed.begin(), allowed.end(), c)) missing.push_back(c);
  }
  if (missing.empty()) return Status::Ok();
  return InvalidArgument(what + ": CPU " + FormatCpuList(missing) + " is not available to this process (it may use " +
                         FormatCpuList(allowed) + ")");
}

Status PinCurrentThread(const std::vector<int>& cpus) { return Pin(pthread_self(), cpus); }

Status PinThread(std::thread& thread, const std::vector<int>& cpus) { return Pin(thread.native_handle(), cpus); }

void NameCurrentThread(const std::string& name) { pthread_setname_np(pthread_self(), name.substr(0, 15).c_str()); }

}  // namespace splitlearnd
