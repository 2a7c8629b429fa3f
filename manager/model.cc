#include "manager/model.h"

namespace splitlearnd {

StatusOr<InferenceResult> Model::Backward(const BackwardRequest&) const {
  return FailedPrecondition("model '" + id() + "' does not support training");
}

StatusOr<std::string> Model::OpenSession(const std::string&, const SessionConfig&) const {
  return FailedPrecondition("model '" + id() + "' does not support sessions");
}

StatusOr<int64_t> Model::CloseSession(const std::string& id) const { return NotFound("unknown session '" + id + "'"); }

void Model::Maintain(const SessionConfig&, const TrainingConfig&) const {}

Status Model::Warmup(int) const { return Status::Ok(); }

Status Model::SaveCheckpoint(const std::string&) const {
  return FailedPrecondition("model '" + id() + "' has no trainable state");
}

}  // namespace splitlearnd
