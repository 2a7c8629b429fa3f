// See convert.h.
#include "manager/torchscript/convert.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace splitlearnd {

at::ScalarType ToScalarType(DType t) {
  switch (t) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt64: return at::kLong;
    case DType::kInt32: return at::kInt;
    case DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

std::optional<DType> FromScalarType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kLong: return DType::kInt64;
    case at::kInt: return DType::kInt32;
    case at::kBool: return DType::kBool;
    default: return std::nullopt;
  }
}

bool IsFloating(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

at::Tensor ToTensor(const HostTensor& h, const c10::Device& device) {
  const auto options = at::TensorOptions().dtype(ToScalarType(h.dtype));
  at::Tensor t;
  if (reinterpret_cast<uintptr_t>(h.data) % DTypeSize(h.dtype) == 0) {
    t = at::from_blob(const_cast<void*>(h.data), h.shape, options);
  } else {
    t = at::empty(h.shape, options);
    std::memcpy(t.data_ptr(), h.data, h.nbytes);
  }
  if (!device.is_cpu()) t = t.to(device);
  return t;
}

StatusOr<HostTensor> ToHost(at::Tensor t, std::optional<DType> asked, DType request_dtype) {
  // A training forward's outputs belong to its graph: the answer's bytes must not hold
  // that graph alive, nor record the conversions below into it.
  t = t.detach();
  std::optional<DType> out = asked;
  const auto own = FromScalarType(t.scalar_type());
  if (!out) {
    if (at::isFloatingType(t.scalar_type())) {
      out = IsFloating(request_dtype) ? request_dtype : DType::kFloat32;
    } else if (own) {
      out = own;
    } else {
      return Internal(std::string("model returned an unsupported dtype ") + c10::toString(t.scalar_type()));
    }
  }
  if (t.scalar_type() != ToScalarType(*out)) t = t.to(ToScalarType(*out));
  if (!t.device().is_cpu()) t = t.to(at::kCPU);
  t = t.contiguous();
  auto holder = std::make_shared<at::Tensor>(std::move(t));
  HostTensor h;
  h.dtype = *out;
  h.shape = holder->sizes().vec();
  h.data = holder->data_ptr();
  h.nbytes = holder->nbytes();
  h.owner = std::move(holder);
  return h;
}

// Whether `r` can share a forward with `head`: the same inputs (count, names, dtypes,
// trailing dimensions), every input of each with the same first dimension, the same
// conversions, and no cache, session or training. The queue merges on a hash of
// this; checking it here makes a hash collision harmless.
bool Mergeable(const InferenceRequest& head, const InferenceRequest& r) {
  if (r.use_cache || !r.past_key_values.empty() || !r.session_id.empty() || r.training) return false;
  if (r.inputs.size() != head.inputs.size() || r.inputs.empty()) return false;
  if (r.output_dtype != head.output_dtype || r.compute_dtype != head.compute_dtype) return false;
  const int64_t rows = r.inputs.front().tensor.shape.empty() ? -1 : r.inputs.front().tensor.shape.front();
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    const NamedTensor& a = head.inputs[i];
    const NamedTensor& b = r.inputs[i];
    if (a.name != b.name || a.tensor.dtype != b.tensor.dtype || b.tensor.shape.empty() ||
        a.tensor.shape.size() != b.tensor.shape.size() || b.tensor.shape.front() != rows ||
        !std::equal(a.tensor.shape.begin() + 1, a.tensor.shape.end(), b.tensor.shape.begin() + 1)) {
      return false;
    }
  }
  return rows >= 1;
}

bool MergedRows(const std::vector<const InferenceRequest*>& batch, std::vector<int64_t>* rows, int64_t* total) {
  rows->clear();
  *total = 0;
  for (const InferenceRequest* r : batch) {
    if (!Mergeable(*batch.front(), *r)) return false;
    rows->push_back(r->inputs.front().tensor.shape.front());
    *total += rows->back();
  }
  return true;
}

at::Tensor ToComputeDtype(at::Tensor t, const InferenceRequest& r) {
  if (r.compute_dtype && at::isFloatingType(t.scalar_type())) t = t.to(ToScalarType(*r.compute_dtype));
  return t;
}

HostTensor MakeWarmupTensor(const TensorSpec& spec) {
  at::Tensor t;
  const auto options = at::TensorOptions().dtype(ToScalarType(spec.dtype));
  if (IsFloating(spec.dtype)) t = at::randn(spec.shape, options);
  else if (spec.dtype == DType::kBool) t = at::ones(spec.shape, options);
  else t = at::zeros(spec.shape, options);
  auto holder = std::make_shared<at::Tensor>(std::move(t));
  return HostTensor{spec.dtype, spec.shape, holder->data_ptr(), holder->nbytes(), holder};
}

Status RunWarmup(const Model& model, const WarmupConfig& warmup, std::optional<DType> compute_dtype,
                 int max_batch_size) {
  if (warmup.inputs.empty()) return Status::Ok();
  InferenceRequest warm;
  warm.compute_dtype = compute_dtype;  // as the daemon sets it on every request
  for (const auto& spec : warmup.inputs) warm.inputs.push_back(NamedTensor{spec.name, MakeWarmupTensor(spec)});
  int64_t rows = 1;
  bool mergeable = true;
  for (const auto& in : warm.inputs) {
    if (in.tensor.shape.empty() || in.tensor.shape[0] < 1) mergeable = false;
    else rows = std::max(rows, in.tensor.shape[0]);
  }
  std::vector<size_t> sizes{1};
  const int64_t full = max_batch_size / rows;
  if (mergeable && full > 1) sizes.push_back(static_cast<size_t>(full));
  for (size_t n : sizes) {
    const std::vector<const InferenceRequest*> batch(n, &warm);
    for (int i = 0; i < warmup.runs; ++i) {
      for (auto& r : model.Run(batch)) {
        if (!r.ok()) {
          return Status(r.status().code(), "warmup of '" + model.id() + "' (batch of " + std::to_string(n) +
                                               ") failed: " + r.status().message());
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace splitlearnd
