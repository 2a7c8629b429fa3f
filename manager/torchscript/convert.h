// Conversions between the manager's host tensors and libtorch's, shared by the
// adapter's models (TorchScript and AOTInductor), and the warmup they both run.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "manager/model.h"

namespace splitlearnd {

at::ScalarType ToScalarType(DType t);
std::optional<DType> FromScalarType(at::ScalarType t);
bool IsFloating(DType t);

// A view over the request's bytes where alignment allows, else one copy; then moved to
// `device` when that is not the CPU.
at::Tensor ToTensor(const HostTensor& h, const c10::Device& device);

// The answer's dtype: what the request asked for; else, for floating outputs, the
// request's floating dtype (float32 for legacy clients); other outputs keep theirs.
StatusOr<HostTensor> ToHost(at::Tensor t, std::optional<DType> asked, DType request_dtype);

// Whether `r` can share a forward with `head`: the same inputs (count, names, dtypes,
// trailing dimensions), every input of each with the same first dimension (at least
// 1), the same conversions, and no cache, session or training. The queue merges on a
// hash of this; models check it again, so that a hash collision is harmless.
bool Mergeable(const InferenceRequest& head, const InferenceRequest& r);

// Whether the whole batch can share one forward (Mergeable with its first request);
// then each request's rows, in order, and their sum.
bool MergedRows(const std::vector<const InferenceRequest*>& batch, std::vector<int64_t>* rows, int64_t* total);

// Floating tensors are converted to the request's compute_dtype, when it sets one.
at::Tensor ToComputeDtype(at::Tensor t, const InferenceRequest& r);

// Random (floating), ones (bool) or zeros (integer) of the spec's shape and dtype.
HostTensor MakeWarmupTensor(const TensorSpec& spec);

// Runs `model`'s warmup inputs through Model::Run at batch 1 and, when batching may
// merge requests, at as many requests as fill `max_batch_size` rows (inputs without a
// first dimension never merge), `warmup.runs` times each (see Model::Warmup).
Status RunWarmup(const Model& model, const WarmupConfig& warmup, std::optional<DType> compute_dtype,
                 int max_batch_size);

}  // namespace splitlearnd
