// Wire <-> host tensors: validation and decoding of requests, encoding of answers.
//
// Decoding never copies tensor bytes: HostTensors point into the request message,
// which the caller keeps alive until the job is done. Every check here runs before a
// request reaches a queue, so a malformed request never costs a model run.
#pragma once

#include <string>

#include "common/status.h"
#include "compute.pb.h"
#include "manager/model.h"

namespace splitlearnd {

struct Limits {
  int max_rank = 8;
  int64_t max_elements = 1LL << 28;
  size_t max_id_bytes = 256;        // model_id, forward_id, session ids, tensor names
  int max_inputs = 64;              // named inputs per request
  int max_kv_entries = 1024;        // past_key_values per request
  int max_metadata_entries = 64;
  size_t max_metadata_bytes = 16384;
};

struct DecodedCompute {
  InferenceRequest request;
  uint64_t batch_key = 0;  // 0: this request never merges with others
  int64_t rows = 1;
};

// Validates and decodes a ComputeRequest (fields 1-15 plus extensions).
StatusOr<DecodedCompute> DecodeCompute(const splitlearn::comm::ComputeRequest& req, const Limits& limits);

// Validates and decodes a BackwardRequest (the training settings are the caller's).
StatusOr<BackwardRequest> DecodeBackward(const splitlearn::comm::BackwardRequest& req, const Limits& limits);

// Fills data/shape/dtype, extra outputs, present_key_values and the ids of `resp`.
Status EncodeCompute(const InferenceResult& result, splitlearn::comm::ComputeResponse* resp);
// Fills the input gradient of `resp` from outputs[0].
Status EncodeBackward(const InferenceResult& result, splitlearn::comm::BackwardResponse* resp);

// Validates one raw tensor of the wire. `what` names it in error messages.
template <typename ShapeField>
Status DecodeTensor(const std::string& bytes, const ShapeField& shape, int dtype_value, const Limits& limits,
                    const std::string& what, HostTensor* out);

}  // namespace splitlearnd
