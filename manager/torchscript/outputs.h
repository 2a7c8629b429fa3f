// What a TorchScript forward returns, read back: a tensor, a tuple or list of tensors,
// or a dict of them, any of which may carry a KV cache (a list of (key, value) tuples).
// Includes libtorch; adapter-internal.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <utility>
#include <vector>

#include "common/status.h"
#include "manager/model.h"

namespace splitlearnd {

// A KV cache as the model takes and returns it: one (key, value) pair per layer.
using KVList = std::vector<std::pair<at::Tensor, at::Tensor>>;

// Appends the output's tensors, in order, to `flat` (KV lists excluded). False when the
// output holds anything that cannot be split by rows: a value that is no tensor, or a
// non-empty cache.
bool Flatten(const c10::IValue& out, std::vector<at::Tensor>* flat);

// The cache the output returns, if any, appended to `kv`.
bool ExtractCache(const c10::IValue& out, KVList* kv);

// Turns the forward's output into named host tensors ("output", "output_<i>" or the
// dict's keys). `slices` replaces the output's tensors (in Flatten order) for one
// request of a merged batch; `with_cache` copies a returned cache out as
// present_key_values.
StatusOr<InferenceResult> CollectOutputs(const c10::IValue& out, const InferenceRequest& request,
                                         const std::vector<at::Tensor>* slices, bool with_cache);

}  // namespace splitlearnd
