// Ids the server hands out to clients (sessions, training forwards). libtorch-free.
#pragma once

#include <cstdint>
#include <string>

namespace splitlearnd {

// A prefix and serial that read well in logs, then 128 random bits, so that nobody can
// guess another client's id: "s-3-" followed by 32 lower-case hex digits.
std::string UnguessableId(const char* prefix, uint64_t serial);

}  // namespace splitlearnd
