#pragma once
// CPU sets: parsing Linux CPU lists ("0-3,6") and pinning threads to them.

#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace splitlearnd {

// Parses a CPU list in the kernel's notation ("1", "0-3", "0,2-3"). The result is
// sorted and without repeats; an empty or malformed list, or a CPU above 1023, is an
// error whose message names the culprit.
StatusOr<std::vector<int>> ParseCpuList(const std::string& text);

// "0-3,6" for {0,1,2,3,6}: the inverse of ParseCpuList.
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs this process may run on (sched_getaffinity), in ascending order.
std::vector<int> AllowedCpus();

// Checks that every CPU in `cpus` is one the process may run on; `what` names the
// setting in the message.
Status CheckCpusAllowed(const std::vector<int>& cpus, const std::string& what);

// Pins the calling thread (or `thread`) to `cpus`. An empty list allows every CPU the
// process may use.
Status PinCurrentThread(const std::vector<int>& cpus);
Status PinThread(std::thread& thread, const std::vector<int>& cpus);

// Names the calling thread for top -H, ps -L and debuggers (at most 15 bytes kept).
void NameCurrentThread(const std::string& name);

}  // namespace splitlearnd
