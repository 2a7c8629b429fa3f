// A small C++ client for splitlearnd's ComputeService (and any server speaking the
// legacy protocol). Thread-safe: one Client may be shared by many threads.
//
//   splitlearnd::Client client("127.0.0.1:50051");
//   splitlearnd::Tensor x{splitlearnd::DType::kFloat32, {1, 10, 768}, bytes};
//   auto y = client.Compute("gpt2-trunk", x);   // y->tensor, y->compute_time_ms
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "compute.grpc.pb.h"

namespace splitlearnd {

struct ClientOptions {
  int64_t max_message_bytes = 256LL * 1024 * 1024;
  std::chrono::milliseconds timeout{30000};  // per call; 0: none
};

// An owned tensor on the client side: raw little-endian bytes.
struct Tensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string data;
};

struct ComputeResult {
  Tensor tensor;
  float compute_time_ms = 0;
  float queue_time_ms = 0;
};

class Client {
 public:
  explicit Client(const std::string& target, ClientOptions options = {});
  Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  StatusOr<ComputeResult> Compute(const std::string& model_id, const Tensor& input,
                                  std::optional<DType> output_dtype = std::nullopt);
  StatusOr<splitlearn::comm::HealthResponse> Health();
  StatusOr<splitlearn::comm::ServiceInfoResponse> Info();

  splitlearn::comm::ComputeService::Stub& stub() { return *stub_; }

 private:
  void SetDeadline(grpc::ClientContext* ctx) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<splitlearn::comm::ComputeService::Stub> stub_;
};

// Channel arguments for splitlearnd (message sizes).
grpc::ChannelArguments DefaultChannelArguments(const ClientOptions& options);
Status FromGrpc(const grpc::Status& s);

}  // namespace splitlearnd
