#pragma once
// Ids that name things across the daemon, and the names made from them.
//
// One character set for every id a person picks: model ids (config's models[].id and
// the management API's LoadModel) and token names (the token file). They appear in
// file names, metric labels, health service names and log lines, so they stay plain.

#include <cstddef>
#include <string>
#include <string_view>

namespace splitlearnd {

inline constexpr size_t kMaxModelIdBytes = 128;
inline constexpr size_t kMaxTokenNameBytes = 64;

// 1 to `max_bytes` of A-Z a-z 0-9 - _ . (ASCII, whatever the locale).
bool IsValidId(std::string_view id, size_t max_bytes);
// Why `id` is not valid, as the end of a sentence ("must be 1 to 128 characters",
// "may contain only letters, digits, '-', '_' and '.'"); empty when it is valid.
std::string IdProblem(std::string_view id, size_t max_bytes);

// The grpc.health.v1 service name of one model, which the daemon serves and clients
// (BalancedChannelOptions::health_service) ask for.
std::string ModelHealthServiceName(const std::string& model_id);

}  // namespace splitlearnd
