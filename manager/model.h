// The Model interface: one loaded shard on one device.
//
// Threading: Run() is called only from the worker thread of the model's device
// (DeviceQueue), never concurrently with itself. Everything else may be called from
// any thread. Models are shared through ModelHandle; a model stays alive while any
// request holds its handle.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "manager/tensor.h"

namespace splitlearnd {

struct InferenceRequest {
  std::vector<NamedTensor> inputs;  // the first may be unnamed (positional)
  std::vector<KVPair> past_key_values;
  bool use_cache = false;
  std::optional<DType> output_dtype;  // unset: the dtype of the first input
};

struct InferenceResult {
  std::vector<NamedTensor> outputs;  // outputs[0] is the primary output
  std::vector<KVPair> present_key_values;
};

class Model {
 public:
  virtual ~Model() = default;

  virtual const std::string& id() const = 0;
  virtual const std::string& device() const = 0;
  // Bytes of parameters and buffers, for memory budgets and status.
  virtual int64_t ParameterBytes() const = 0;

  // Runs a batch of compatible requests (same input names, dtypes and trailing shapes;
  // see DeviceQueue) and returns one result per request, in order. A batch of one is
  // the common case. Worker thread only.
  virtual std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const = 0;
};

using ModelHandle = std::shared_ptr<const Model>;

// Creates models from their config. Load() runs on the manager's loader thread and
// includes warmup: a model it returns is ready to serve.
class ModelLoader {
 public:
  virtual ~ModelLoader() = default;
  virtual StatusOr<std::shared_ptr<Model>> Load(const ModelConfig& config) = 0;
  // Called once on each device worker thread before it runs anything.
  virtual void InitWorkerThread() {}
};

}  // namespace splitlearnd
