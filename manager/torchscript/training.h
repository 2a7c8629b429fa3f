// Training of one TorchScript model on the server: the autograd graphs that training
// forwards keep until their backward, the optimizer over the model's parameters, and
// its checkpoints. Includes libtorch; adapter-internal.
//
// Its own lock guards the graphs, the optimizer and the step counts; a training
// forward runs the model outside it. The figures Stats() reads are atomics, so status
// never waits on a backward or a checkpoint.
#pragma once

#include <torch/optim.h>
#include <torch/script.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "manager/model.h"

namespace splitlearnd {

class Training {
 public:
  // Runs the model on the given inputs (no past cache).
  using ForwardFn = std::function<StatusOr<c10::IValue>(const std::vector<at::Tensor>&)>;

  // The module's parameters become trainable, with an optimizer, when `config` enables
  // training with one; otherwise they are frozen (requires_grad off).
  Training(std::string model_id, torch::jit::Module module, c10::Device device, const TrainingConfig& config);
  // Nothing learnt is lost: writes config.checkpoint_path when the optimizer stepped
  // since the last checkpoint.
  ~Training();
  Training(const Training&) = delete;
  Training& operator=(const Training&) = delete;

  // Loads optimizer state written by SaveCheckpoint; a failure is logged, not fatal.
  void RestoreOptimizer(const std::string& path);

  // A training forward: the output, and its graph kept under result.forward_id
  // (request.forward_id, or a server-minted id) for Backward.
  //
  // Where the optimizer steps, the forward runs on a copy of the parameters that the
  // graph keeps (weight stashing): several forwards may be in flight, their backwards
  // may come in any order, and each computes its input gradient with the weights its
  // forward saw while its parameter gradient updates the weights of the moment
  // (pipelined SGD; docs/models.md). The copy costs the parameters' bytes per graph
  // and is counted in training_graph_bytes.
  StatusOr<InferenceResult> Forward(const InferenceRequest& request, const ForwardFn& forward);
  // The input gradients of a kept forward (which is then gone), and an optimizer step
  // every request.accumulation_steps backwards. A learning rate above the config's
  // max_learning_rate, or a gradient holding NaN or infinity, is INVALID_ARGUMENT and
  // changes nothing (the graph stays for a corrected retry).
  StatusOr<InferenceResult> Backward(const BackwardRequest& request);
  // Drops graphs older than config.graph_ttl_s.
  void Expire(const TrainingConfig& config);
  // The module, then the optimizer state at `path`.optim, each written atomically.
  Status SaveCheckpoint(const std::string& path);

  int64_t graphs() const { return graph_count_.load(); }
  int64_t graph_bytes() const { return graph_bytes_.load(); }
  int64_t optimizer_steps() const { return steps_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Graph {
    std::vector<at::Tensor> inputs;
    std::vector<std::string> names;
    std::vector<DType> input_dtypes;
    at::Tensor output;
    // Further outputs a client may send gradients for, by answer name.
    std::vector<std::pair<std::string, at::Tensor>> named_outputs;
    int64_t bytes = 0;
    Clock::time_point created;
  };

  // Keeps `graph` under `id`, evicting the oldest beyond the config's count and bytes.
  void Keep(const std::string& id, Graph graph, const TrainingConfig& config);  // mu_ held
  // Outputs of a graph, each with the gradient a backward brought for it.
  using Targets = std::vector<std::pair<at::Tensor, const HostTensor*>>;
  StatusOr<InferenceResult> Gradients(const Graph& graph, const Targets& targets,
                                      const BackwardRequest& request);  // mu_ not held
  void Step(const BackwardRequest& request);  // takes mu_
  Status SaveLocked(const std::string& path);  // mu_ held
  Status CheckFinite(const BackwardRequest& request) const;
  void UpdateStatsLocked();  // mu_ held

  const std::string model_id_;
  // Swaps the module's parameters for copies while one training forward runs.
  class ParameterStash;
  const torch::jit::Module module_;  // a handle on the model's module, for checkpoints and the stash
  const c10::Device device_;
  const std::string checkpoint_path_;
  std::mutex mu_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // null: only input gradients
  std::map<std::string, Graph> graphs_;
  uint64_t serial_ = 0;
  int64_t backwards_ = 0;
  int64_t saved_steps_ = 0;
  std::atomic<int64_t> graph_count_{0}, graph_bytes_{0}, steps_{0};
};

}  // namespace splitlearnd
