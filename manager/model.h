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
  std::optional<DType> output_dtype;   // unset: see ToHost in the adapter
  std::optional<DType> compute_dtype;  // floating inputs are converted to it

  // Server-side cache: the session's cache is the past, the present replaces it.
  std::string session_id;
  SessionConfig session_limits;

  // Training forward: the autograd graph is kept under forward_id for Backward().
  bool training = false;
  std::string forward_id;
  TrainingConfig training_config;
};

struct BackwardRequest {
  std::string forward_id;
  HostTensor grad_output;  // gradient of the primary output
  std::vector<NamedTensor> named_grad_outputs;  // of further outputs, by answer name
  std::optional<double> learning_rate;
  int accumulation_steps = 1;  // optimizer steps every this many backwards
  TrainingConfig training_config;
};

// Figures a model keeps about its sessions and training (any thread).
struct ModelStats {
  int64_t sessions = 0;
  int64_t session_bytes = 0;
  int64_t training_graphs = 0;
  int64_t training_graph_bytes = 0;
  int64_t optimizer_steps = 0;
};

struct InferenceResult {
  std::vector<NamedTensor> outputs;  // outputs[0] is the primary output
  std::vector<KVPair> present_key_values;
  std::string forward_id;       // of a training forward
  std::string session_id;       // of a session step
  int64_t session_tokens = -1;  // sequence length cached in the session after the step
  int64_t optimizer_steps = -1; // after a backward or checkpoint
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

  // Worker thread only, like Run(). Defaults: the model supports none of these.
  // The input gradient(s) of a training forward, and an optimizer step when enabled.
  virtual StatusOr<InferenceResult> Backward(const BackwardRequest& request) const;
  // Opens a server-side KV-cache session; `wanted` may name it. Returns its id.
  virtual StatusOr<std::string> OpenSession(const std::string& wanted, const SessionConfig& limits) const;
  // Bytes released.
  virtual StatusOr<int64_t> CloseSession(const std::string& id) const;
  // Expires idle sessions and old training graphs.
  virtual void Maintain(const SessionConfig& sessions, const TrainingConfig& training) const;
  // Writes trained parameters atomically to `path`.
  virtual Status SaveCheckpoint(const std::string& path) const;
  // Runs the warmup its config asks for: at batch 1 and, when batching may merge
  // requests, at `max_batch_size` as well, so that the first requests (and the first
  // full batch) meet a worker whose allocator, BLAS buffers and executor plans are
  // already in place. The manager calls it once per loaded version, on the device
  // worker, before the version serves; an error fails the load.
  virtual Status Warmup(int max_batch_size) const;

  // Any thread.
  virtual ModelStats Stats() const { return {}; }
};

using ModelHandle = std::shared_ptr<const Model>;

// Creates models from their config. Load() runs on the manager's loader thread; the
// manager then warms the model on its device worker (Model::Warmup) before it serves.
class ModelLoader {
 public:
  virtual ~ModelLoader() = default;
  virtual StatusOr<std::shared_ptr<Model>> Load(const ModelConfig& config) = 0;
  // Called once on each device worker thread before it runs anything.
  virtual void InitWorkerThread() {}
};

}  // namespace splitlearnd
