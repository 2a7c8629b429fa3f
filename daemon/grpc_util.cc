#include "daemon/grpc_util.h"

namespace splitlearnd {

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

std::chrono::steady_clock::time_point SteadyDeadline(const grpc::ServerContextBase& ctx) {
  using SteadyClock = std::chrono::steady_clock;
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return SteadyClock::time_point::max();
  const auto left = deadline - std::chrono::system_clock::now();
  return SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(left);
}

}  // namespace splitlearnd
