// What a TorchScript forward returns, read back: a tensor, a tuple or list of tensors,
// or a dict of them, any of which may carry a KV cache (a list of (key, value) tuples).
// Every kind of call (inference, merged batches, session steps, training forwards)
// reads the output with ReadOutput, so all find the same primary output and the same
// cache. Includes libtorch; adapter-internal.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "manager/model.h"

namespace splitlearnd {

// A KV cache as the model takes and returns it: one (key, value) pair per layer.
using KVList = std::vector<std::pair<at::Tensor, at::Tensor>>;

// A forward's output, read once.
struct ModelOutput {
  // The tensors in order, under their answer names ("output", "output_<i>" with i the
  // position in the tuple or list, or the dict's keys). tensors[0] is the primary output.
  std::vector<std::string> names;
  std::vector<at::Tensor> tensors;
  bool has_cache = false;  // the output held a cache (possibly empty)
  KVList cache;
};

// Reads a tensor; a tuple or list whose elements are tensors, None, or one cache; or a
// dict whose values are those. INTERNAL when it holds no tensor, anything else, a
// cache entry that is not a pair of tensors, or more than one non-empty cache.
StatusOr<ModelOutput> ReadOutput(const c10::IValue& out);

// Turns the output into named host tensors. `slices` replaces output.tensors for one
// request of a merged batch; `with_cache` copies the cache out as present_key_values.
StatusOr<InferenceResult> CollectOutputs(const ModelOutput& out, const InferenceRequest& request,
                                         const std::vector<at::Tensor>* slices, bool with_cache);

}  // namespace splitlearnd
