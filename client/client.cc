#include "client/client.h"

namespace splitlearnd {
namespace pb = splitlearn::comm;

Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return Status::Ok();
  return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
}

grpc::ChannelArguments DefaultChannelArguments(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  return args;
}

Client::Client(const std::string& target, ClientOptions options)
    : Client(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), DefaultChannelArguments(options)),
             options) {}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(options), channel_(std::move(channel)), stub_(pb::ComputeService::NewStub(channel_)) {}

void Client::SetDeadline(grpc::ClientContext* ctx) const {
  if (options_.timeout.count() > 0) ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

StatusOr<ComputeResult> Client::Compute(const std::string& model_id, const Tensor& input,
                                        std::optional<DType> output_dtype) {
  pb::ComputeRequest req;
  req.set_model_id(model_id);
  req.set_data(input.data);
  for (int64_t d : input.shape) req.add_shape(static_cast<int32_t>(d));
  if (input.dtype != DType::kFloat32) req.set_dtype(static_cast<pb::DType>(input.dtype));
  if (output_dtype) req.set_output_dtype(static_cast<pb::DType>(*output_dtype));
  pb::ComputeResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  if (auto s = FromGrpc(stub_->Compute(&ctx, req, &resp)); !s.ok()) return s;
  ComputeResult r;
  r.tensor.dtype = resp.dtype() == pb::DTYPE_UNSPECIFIED ? DType::kFloat32 : static_cast<DType>(resp.dtype());
  r.tensor.shape.assign(resp.shape().begin(), resp.shape().end());
  r.tensor.data = std::move(*resp.mutable_data());
  r.compute_time_ms = resp.compute_time_ms();
  r.queue_time_ms = resp.queue_time_ms();
  return r;
}

StatusOr<pb::HealthResponse> Client::Health() {
  pb::HealthResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  if (auto s = FromGrpc(stub_->HealthCheck(&ctx, pb::HealthRequest(), &resp)); !s.ok()) return s;
  return resp;
}

StatusOr<pb::ServiceInfoResponse> Client::Info() {
  pb::ServiceInfoResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  if (auto s = FromGrpc(stub_->GetServiceInfo(&ctx, pb::ServiceInfoRequest(), &resp)); !s.ok()) return s;
  return resp;
}

}  // namespace splitlearnd
