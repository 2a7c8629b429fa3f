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

// How a tensor's bytes may arrive: plain, or (the legacy client's compressed codec) as
// a zlib stream that inflates to exactly the bytes its shape and dtype need
// (legacy_zlib.h). Decoding records whether a legacy field came compressed, so that the
// answer goes back the same way.
// The client may also send float32 tensors int8 blockwise (common/blockwise_int8.h)
// and ask for the answer's float32 outputs that way: int8_block > 0 is that block size.
struct WireCodec {
  bool zlib = false;
  int int8_block = 0;  // answer: 0 plain; else float32 outputs int8 blockwise in blocks of this
};

// Block size of int8 answers when the request names none.
constexpr int kDefaultInt8Block = 64;

struct DecodedCompute {
  InferenceRequest request;
  uint64_t batch_key = 0;  // 0: this request never merges with others
  int64_t rows = 1;         // dim 0 of the inputs (0 for a scalar or an empty batch)
  WireCodec codec;          // how `data` came: the answer is encoded the same way
};

struct DecodedBackward {
  BackwardRequest request;
  WireCodec codec;  // how grad_output came: grad_input goes back the same way
};

// Validates and decodes a ComputeRequest (fields 1-15 plus extensions).
StatusOr<DecodedCompute> DecodeCompute(const splitlearn::comm::ComputeRequest& req, const Limits& limits);

// Validates and decodes a BackwardRequest (the training settings are the caller's).
StatusOr<DecodedBackward> DecodeBackward(const splitlearn::comm::BackwardRequest& req, const Limits& limits);

// Fills data/shape/dtype, extra outputs, present_key_values and the ids of `resp`;
// with codec.zlib, `data` and the cache's bytes are zlib streams, as the request's were.
// With codec.int8_block, float32 outputs (primary, named and the cache's keys and
// values) go int8 blockwise; a tensor of another dtype, or one holding NaN or
// infinity, goes as it would without (plain, or zlib for the legacy fields).
Status EncodeCompute(const InferenceResult& result, splitlearn::comm::ComputeResponse* resp,
                     const WireCodec& codec = {});
// Fills the input gradient of `resp` from outputs[0]: int8 blockwise with
// codec.int8_block (when float32 and finite), else zlib-compressed with codec.zlib.
Status EncodeBackward(const InferenceResult& result, splitlearn::comm::BackwardResponse* resp,
                      const WireCodec& codec = {});

// Validates one raw tensor of the wire. `what` names it in error messages. An empty
// shape with the bytes of one element is a scalar (rank 0); dimensions of size 0 are
// valid (no bytes). With `codec` (the legacy fields), bytes that do not match the
// shape but are a zlib stream of exactly the bytes it needs are inflated (the tensor
// then owns them) and codec->zlib is set.
template <typename ShapeField>
Status DecodeTensor(const std::string& bytes, const ShapeField& shape, int dtype_value, const Limits& limits,
                    const std::string& what, HostTensor* out, WireCodec* codec = nullptr);

// Validates and dequantises an int8 blockwise tensor into float32 (the tensor owns the
// values). Its dtype must be float32 or unspecified; wrong byte or scale counts, a
// block size below 1 and negative or non-finite scales are INVALID_ARGUMENT.
template <typename ShapeField>
Status DecodeInt8Tensor(const std::string& bytes, const ShapeField& shape, int dtype_value,
                        const splitlearn::comm::BlockwiseInt8& q, const Limits& limits, const std::string& what,
                        HostTensor* out);

}  // namespace splitlearnd
