// A TorchScript module as a Model: the inference path (single requests, merged batches,
// session steps) and the calls that reach its sessions and training. Includes
// libtorch; adapter-internal (the loader makes these, loader.cc).
//
// The model itself is immutable once built, so its const methods are honest: what
// changes while it serves is owned by its SessionStore (KV caches) and its Training
// (graphs, optimizer, checkpoints), each non-const behind a unique_ptr, with its own
// lock.
#pragma once

#include <torch/script.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "manager/model.h"
#include "manager/torchscript/outputs.h"
#include "manager/torchscript/sessions.h"
#include "manager/torchscript/training.h"

namespace splitlearnd {

class TorchScriptModel final : public Model {
 public:
  // `parameter_bytes`: the parameters and buffers of the module as loaded (a frozen one
  // holds its parameters as constants, so the loader counts them before it optimizes).
  TorchScriptModel(const ModelConfig& config, torch::jit::Module module, c10::Device device, int64_t parameter_bytes);

  // Before the model is shared: optimizer state saved beside a checkpoint it resumes from.
  void RestoreOptimizer(const std::string& path) { training_->RestoreOptimizer(path); }

  const std::string& id() const override { return id_; }
  const std::string& device() const override { return device_name_; }
  int64_t ParameterBytes() const override { return parameter_bytes_; }
  ModelStats Stats() const override;

  std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const override;
  Status Warmup(int max_batch_size) const override;
  StatusOr<InferenceResult> Backward(const BackwardRequest& request) const override;
  StatusOr<std::string> OpenSession(const std::string& wanted, const SessionConfig& limits) const override;
  StatusOr<int64_t> CloseSession(const std::string& id) const override;
  void Maintain(const SessionConfig& sessions, const TrainingConfig& training) const override;
  Status SaveCheckpoint(const std::string& path) const override;

 private:
  enum class ArgKind { kTensor, kKVList, kBool, kOther };
  struct ArgInfo {
    std::string name;
    ArgKind kind = ArgKind::kOther;
    bool optional = false;     // Optional[...] type
    bool has_default = false;  // has a default value in the signature
  };
  static std::vector<ArgInfo> ForwardArgs(const torch::jit::Module& module);

  // On the cpu worker, before a forward: this model's OpenBLAS thread count (models on
  // other devices leave OpenBLAS alone).
  void ApplyBlasThreads() const;
  StatusOr<InferenceResult> RunOne(const InferenceRequest& request) const;
  // One forward over the concatenation of compatible requests, split back by rows.
  // Returns false, with nothing added to `results`, when the batch must be served one
  // request at a time instead.
  bool RunMerged(const std::vector<const InferenceRequest*>& batch, std::vector<StatusOr<InferenceResult>>* results) const;
  StatusOr<InferenceResult> SessionStep(const InferenceRequest& request, const std::vector<at::Tensor>& inputs) const;
  // Binds the request's inputs (by name, else positionally), the cache and use_cache
  // to forward()'s arguments and runs it.
  StatusOr<c10::IValue> Forward(const InferenceRequest& request, const std::vector<at::Tensor>& inputs,
                                const KVList& past, bool use_cache) const;

  const std::string id_;
  const std::string device_name_;
  const c10::Device device_;
  const torch::jit::Module module_;
  const std::vector<ArgInfo> args_;
  const bool takes_cache_;
  const int64_t parameter_bytes_;
  const WarmupConfig warmup_;
  const std::optional<DType> compute_dtype_;  // warmup converts as requests are converted
  const int blas_threads_;                    // 0: the process's setting
  const std::unique_ptr<SessionStore> sessions_;
  const std::unique_ptr<Training> training_;
};

}  // namespace splitlearnd
