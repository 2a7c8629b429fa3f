#pragma once
// Small adapters between splitlearnd's types and gRPC's, used by the daemon's services
// (compute_service.cc, management_service.cc).

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "common/status.h"

namespace splitlearnd {

// The same code and message (Status codes are gRPC's codes).
grpc::Status ToGrpc(const Status& s);

// The call's deadline on the steady clock; time_point::max() when it has none.
std::chrono::steady_clock::time_point SteadyDeadline(const grpc::ServerContextBase& ctx);

}  // namespace splitlearnd
