// The daemon's whole desired state, as read from one YAML file.
//
// Plain structs only: config/ is the only place that knows YAML. LoadConfigFile()
// parses and validates the whole file; a config that comes back OK is complete
// (defaults filled in, relative model paths resolved against model_root).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/dtype.h"

namespace splitlearnd {

// TLS on every TCP listener (compute and management); Unix sockets stay plaintext.
// Paths are absolute once loaded (relative ones resolve against the config's folder).
struct TlsConfig {
  std::string cert_file;       // PEM chain, leaf first
  std::string key_file;        // PEM private key of the leaf
  std::string client_ca_file;  // empty: no client certificates (no mutual TLS)
  bool require_client_cert = false;  // true by default when client_ca_file is set
};

enum class AuthMode { kToken, kNone };

// Bearer tokens and who may use the management service.
struct AuthConfig {
  std::string token_file;  // empty: no tokens; absolute once loaded
  AuthMode compute = AuthMode::kNone;  // default: kToken when token_file is set
  AuthMode management = AuthMode::kToken;  // over TCP; kNone is an explicit opt-out
  // Peers of a Unix management socket. Unset: root and the daemon's own uid, and the
  // daemon's primary group.
  std::optional<std::vector<uint32_t>> management_unix_uids;
  std::optional<std::vector<std::string>> management_unix_groups;
};

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";
  std::string management_listen;  // empty: no management listener
  std::string metrics_listen;     // empty: no metrics endpoint
  int64_t max_message_bytes = 256LL * 1024 * 1024;
  double drain_timeout_s = 30;
  // SIGTERM: seconds of NOT_SERVING health while still serving, before new calls are refused.
  double drain_grace_s = 0;
  bool watch_config = true;
  std::string log_level = "info";
  // Largest element count accepted in one input tensor.
  int64_t max_tensor_elements = 1LL << 28;
  std::optional<TlsConfig> tls;  // unset: plaintext
  AuthConfig auth;
  // CPUs for the daemon's own threads (gRPC, housekeeping) and for the workers of
  // devices without their own `cpus`; empty: every CPU the process may use.
  std::vector<int> cpus;
};

// Settings of one device ("cpu", "cuda:0", ...). Thread counts are process-wide in
// libtorch, so they are read from the "cpu" entry only.
struct DeviceConfig {
  std::string name;
  int intra_op_threads = 0;  // 0: splitlearnd picks (see docs/threading.md)
  int inter_op_threads = 0;
  int blas_threads = 0;
  int64_t queue_capacity = 256;
  int64_t idle_spin_us = 0;          // worker polls this long for the next job before sleeping
  std::vector<int> cpus;             // the worker thread's CPUs; empty: as server.cpus
  int max_models = 0;                // 0: no limit
  int64_t memory_budget_bytes = 0;   // parameter + buffer bytes of its models; 0: no limit
  bool evict_lru = false;            // over a limit, unload the least recently used model
};

struct TensorSpec {
  std::string name;  // empty: positional
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;

  bool operator==(const TensorSpec& o) const { return name == o.name && shape == o.shape && dtype == o.dtype; }
};

struct WarmupConfig {
  std::vector<TensorSpec> inputs;
  int runs = 1;
};

struct BatchingConfig {
  int max_batch_size = 1;  // 1: batching off
  int64_t max_delay_us = 0;
  // false (wait: adaptive): the device worker waits for more requests only while the
  // model's recent traffic says they are about to come, at most max_delay_us per batch.
  // true (wait: fixed): it waits for a full batch until max_delay_us after the first
  // request arrived.
  bool fixed_wait = false;
};

// Server-side KV-cache sessions of one model.
struct SessionConfig {
  int max_sessions = 64;
  double idle_timeout_s = 300;
  int64_t max_bytes = 2LL * 1024 * 1024 * 1024;
};

// Training through ComputeBackward.
struct TrainingConfig {
  bool enabled = false;
  std::string optimizer = "sgd";  // sgd, adam, or none (input gradients only)
  double learning_rate = 1e-4;
  double momentum = 0;            // sgd only
  // A backward's own learning_rate above it is INVALID_ARGUMENT: one client cannot
  // wreck parameters others share.
  double max_learning_rate = 1.0;
  std::string checkpoint_path;    // empty: no checkpoints; relative: to model_root
  int max_graphs = 64;            // training forwards kept for their backward
  int64_t max_graph_bytes = 1LL << 30;
  double graph_ttl_s = 300;
};

struct ModelConfig {
  std::string id;
  std::string path;  // absolute once loaded (resolved against model_root)
  std::string device = "cpu";
  bool is_default = false;
  std::string sha256;  // optional pin, lower-case hex
  WarmupConfig warmup;
  BatchingConfig batching;
  int64_t timeout_ms = 0;  // 0: only the client's deadline applies
  int blas_threads = 0;    // OpenBLAS threads for this model's forwards (cpu only); 0: devices.cpu.blas_threads
  // Freeze the module and run TorchScript's inference optimizations at load (parameters
  // become constants: not with training).
  bool optimize = false;
  // With optimize, on a cpu device: float32 Linear weights packed once at load for the
  // adapter's own GEMM kernel (single-threaded; faster than BLAS at a few rows).
  bool prepack_linear = false;
  std::optional<DType> compute_dtype;  // inputs are converted to it before forward()
  SessionConfig sessions;
  TrainingConfig training;

  bool operator==(const ModelConfig&) const;
  bool operator!=(const ModelConfig& o) const { return !(*this == o); }
};

// How two configs of one model differ, which decides what a reload does with it.
enum class ModelChange {
  kNone,     // every field equal
  kInPlace,  // only fields a serving version takes as they are (default, batching,
             // timeout, sessions, training's graph limits)
  kNewLoad,  // a field the load reads (file, device, warmup, optimizations, training):
             // a new version must load
};
// The one list of ModelConfig's fields and their kind (config.cc); operator== and
// SameLoad are made from it.
ModelChange CompareModels(const ModelConfig& a, const ModelConfig& b);
// True when a version loaded with `a` can serve `b` without loading again.
inline bool SameLoad(const ModelConfig& a, const ModelConfig& b) {
  return CompareModels(a, b) != ModelChange::kNewLoad;
}

struct Config {
  std::string source_path;  // the file it came from, if any
  ServerConfig server;
  std::string model_root = "/var/lib/splitlearnd/models";
  std::map<std::string, DeviceConfig> devices;  // every device a model uses has an entry
  std::vector<ModelConfig> models;

  const ModelConfig* FindModel(const std::string& id) const;
  // The model that answers requests with an empty model_id: the one marked default,
  // or the only model. Null when neither applies.
  const ModelConfig* DefaultModel() const;
  const DeviceConfig& Device(const std::string& name) const;
};

// Parse and validate. Errors name the file, line, column and key.
StatusOr<Config> LoadConfigFile(const std::string& path);
// Same, from text; `origin` is used in error messages, `base_dir` for relative paths.
StatusOr<Config> ParseConfig(const std::string& yaml_text, const std::string& origin,
                             const std::string& base_dir);

// Device strings: "cpu" or "cuda:N". Returns false (and a reason) otherwise.
bool IsValidDeviceName(const std::string& name, std::string* why = nullptr);

}  // namespace splitlearnd
