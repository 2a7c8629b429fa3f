#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "common/cpus.h"
#include "common/files.h"
#include "common/ids.h"

namespace splitlearnd {
namespace {

namespace fs = std::filesystem;

// Thrown inside the parser only; ParseConfig turns it into a Status.
struct ConfigError {
  std::string message;
};

class Parser {
 public:
  explicit Parser(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void Fail(const YAML::Node& node, const std::string& key, const std::string& what) const {
    std::ostringstream os;
    os << origin_;
    const YAML::Mark mark = node.Mark();
    if (mark.line >= 0) os << ":" << (mark.line + 1) << ":" << (mark.column + 1);
    os << ": ";
    if (!key.empty()) os << "'" << key << "': ";
    os << what;
    throw ConfigError{os.str()};
  }

  // Checks that `node` is a map whose keys are all in `allowed`.
  void ExpectMap(const YAML::Node& node, const std::string& key, const std::set<std::string>& allowed) const {
    if (!node.IsMap()) Fail(node, key, "expected a mapping");
    for (const auto& kv : node) {
      const std::string name = kv.first.as<std::string>();
      if (!allowed.count(name)) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        Fail(kv.first, Join(key, name), "unknown key (allowed: " + list + ")");
      }
    }
  }

  template <typename T>
  T Scalar(const YAML::Node& node, const std::string& key, const char* type_name) const {
    if (!node.IsScalar()) Fail(node, key, std::string("expected ") + type_name);
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      Fail(node, key, std::string("expected ") + type_name + ", got '" + node.Scalar() + "'");
    }
  }

  std::string String(const YAML::Node& n, const std::string& key) const { return Scalar<std::string>(n, key, "a string"); }
  std::string NonEmptyString(const YAML::Node& n, const std::string& key) const {
    std::string v = String(n, key);
    if (v.empty()) Fail(n, key, "must not be empty");
    return v;
  }
  bool Bool(const YAML::Node& n, const std::string& key) const { return Scalar<bool>(n, key, "true or false"); }
  // A finite number (YAML's .inf and .nan are refused: no setting here means them).
  double Double(const YAML::Node& n, const std::string& key) const {
    const double v = Scalar<double>(n, key, "a number");
    if (!std::isfinite(v)) Fail(n, key, "must be a finite number");
    return v;
  }
  // A duration in seconds: finite, at most 10^7 s (about 115 days), and positive or
  // at least zero as the setting needs.
  double Seconds(const YAML::Node& n, const std::string& key, bool positive) const {
    const double v = Double(n, key);
    if (positive ? v <= 0 : v < 0) Fail(n, key, positive ? "must be positive" : "must not be negative");
    if (v > 1e7) Fail(n, key, "must be at most 10000000 seconds");
    return v;
  }
  // A CPU list: "0-3,6" (the kernel's notation), a single number, or a YAML list of numbers.
  std::vector<int> Cpus(const YAML::Node& n, const std::string& key) const {
    std::string text;
    if (n.IsSequence()) {
      if (n.size() == 0) Fail(n, key, "expected at least one CPU");
      for (const auto& c : n) text += (text.empty() ? "" : ",") + std::to_string(Int(c, key, 0, 1023));
    } else {
      text = String(n, key);
    }
    auto cpus = ParseCpuList(text);
    if (!cpus.ok()) Fail(n, key, cpus.status().message());
    return std::move(cpus.value());
  }

  int64_t Int(const YAML::Node& n, const std::string& key, int64_t min, int64_t max) const {
    const auto v = Scalar<int64_t>(n, key, "an integer");
    if (v < min || v > max) {
      Fail(n, key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    return v;
  }

  static std::string Join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

  ServerConfig ParseServer(const YAML::Node& node) const {
    const std::string k = "server";
    ExpectMap(node, k, {"listen", "management_listen", "metrics_listen", "max_message_bytes", "drain_timeout_s",
                        "drain_grace_s", "watch_config", "log_level", "max_tensor_elements", "tls", "auth", "cpus"});
    ServerConfig s;
    for (const auto& kv : node) {
      const std::string name = kv.first.as<std::string>();
      const std::string key = Join(k, name);
      const YAML::Node& v = kv.second;
      if (name == "listen") {
        s.listen = String(v, key);
        if (s.listen.empty()) Fail(v, key, "must not be empty");
      } else if (name == "management_listen") {
        s.management_listen = String(v, key);
      } else if (name == "metrics_listen") {
        s.metrics_listen = String(v, key);
      } else if (name == "max_message_bytes") {
        s.max_message_bytes = Int(v, key, 1024, (1LL << 31) - 1);
      } else if (name == "drain_timeout_s") {
        s.drain_timeout_s = Seconds(v, key, false);
      } else if (name == "drain_grace_s") {
        s.drain_grace_s = Seconds(v, key, false);
      } else if (name == "watch_config") {
        s.watch_config = Bool(v, key);
      } else if (name == "log_level") {
        s.log_level = String(v, key);
        static const std::set<std::string> levels{"trace", "debug", "info", "warn", "error", "critical", "off"};
        if (!levels.count(s.log_level)) Fail(v, key, "must be one of trace, debug, info, warn, error, critical, off");
      } else if (name == "max_tensor_elements") {
        s.max_tensor_elements = Int(v, key, 1, 1LL << 40);
      } else if (name == "tls") {
        s.tls = ParseTls(v);
      } else if (name == "auth") {
        s.auth = ParseAuth(v);
      } else if (name == "cpus") {
        s.cpus = Cpus(v, key);
      }
    }
    return s;
  }

  TlsConfig ParseTls(const YAML::Node& node) const {
    const std::string k = "server.tls";
    ExpectMap(node, k, {"cert_file", "key_file", "client_ca_file", "require_client_cert"});
    TlsConfig t;
    std::optional<bool> require;
    for (const auto& kv : node) {
      const std::string field = kv.first.as<std::string>();
      const std::string key = Join(k, field);
      if (field == "cert_file") t.cert_file = NonEmptyString(kv.second, key);
      else if (field == "key_file") t.key_file = NonEmptyString(kv.second, key);
      else if (field == "client_ca_file") t.client_ca_file = NonEmptyString(kv.second, key);
      else if (field == "require_client_cert") require = Bool(kv.second, key);
    }
    if (t.cert_file.empty()) Fail(node, k, "missing 'cert_file' (the server's PEM certificate chain)");
    if (t.key_file.empty()) Fail(node, k, "missing 'key_file' (the PEM private key of cert_file)");
    if (require && *require && t.client_ca_file.empty()) {
      Fail(node["require_client_cert"], Join(k, "require_client_cert"),
           "needs 'client_ca_file' (the CA that signs client certificates)");
    }
    t.require_client_cert = require.value_or(!t.client_ca_file.empty());
    return t;
  }

  AuthMode Mode(const YAML::Node& n, const std::string& key) const {
    const std::string v = String(n, key);
    if (v == "token") return AuthMode::kToken;
    if (v == "none") return AuthMode::kNone;
    Fail(n, key, "must be token or none");
  }

  AuthConfig ParseAuth(const YAML::Node& node) const {
    const std::string k = "server.auth";
    ExpectMap(node, k, {"token_file", "compute", "management", "management_unix_uids", "management_unix_groups"});
    AuthConfig a;
    std::optional<AuthMode> compute;
    for (const auto& kv : node) {
      const std::string field = kv.first.as<std::string>();
      const std::string key = Join(k, field);
      const YAML::Node& v = kv.second;
      if (field == "token_file") {
        a.token_file = NonEmptyString(v, key);
      } else if (field == "compute") {
        compute = Mode(v, key);
      } else if (field == "management") {
        a.management = Mode(v, key);
      } else if (field == "management_unix_uids") {
        if (!v.IsSequence()) Fail(v, key, "expected a list of user ids");
        a.management_unix_uids.emplace();
        for (const auto& uid : v) a.management_unix_uids->push_back(static_cast<uint32_t>(Int(uid, key, 0, 4294967294LL)));
      } else if (field == "management_unix_groups") {
        if (!v.IsSequence()) Fail(v, key, "expected a list of group names");
        a.management_unix_groups.emplace();
        for (const auto& g : v) a.management_unix_groups->push_back(NonEmptyString(g, key));
      }
    }
    if (compute == AuthMode::kToken && a.token_file.empty()) {
      Fail(node["compute"], Join(k, "compute"), "token needs 'token_file' (the file that lists the tokens)");
    }
    a.compute = compute.value_or(a.token_file.empty() ? AuthMode::kNone : AuthMode::kToken);
    return a;
  }

  DeviceConfig ParseDevice(const std::string& name, const YAML::Node& node) const {
    const std::string k = "devices." + name;
    DeviceConfig d;
    d.name = name;
    if (node.IsNull()) return d;
    ExpectMap(node, k, {"intra_op_threads", "inter_op_threads", "blas_threads", "queue_capacity", "max_models",
                        "memory_budget_bytes", "evict_lru", "idle_spin_us", "cpus"});
    for (const auto& kv : node) {
      const std::string field = kv.first.as<std::string>();
      const std::string key = Join(k, field);
      if (field == "intra_op_threads") d.intra_op_threads = static_cast<int>(Int(kv.second, key, 0, 1024));
      else if (field == "inter_op_threads") d.inter_op_threads = static_cast<int>(Int(kv.second, key, 0, 1024));
      else if (field == "blas_threads") d.blas_threads = static_cast<int>(Int(kv.second, key, 0, 1024));
      else if (field == "queue_capacity") d.queue_capacity = Int(kv.second, key, 1, 1 << 20);
      else if (field == "max_models") d.max_models = static_cast<int>(Int(kv.second, key, 0, 100000));
      else if (field == "memory_budget_bytes") d.memory_budget_bytes = Int(kv.second, key, 0, 1LL << 50);
      else if (field == "evict_lru") d.evict_lru = Bool(kv.second, key);
      else if (field == "idle_spin_us") d.idle_spin_us = Int(kv.second, key, 0, 1000000);
      else if (field == "cpus") d.cpus = Cpus(kv.second, key);
    }
    return d;
  }

  TensorSpec ParseTensorSpec(const YAML::Node& node, const std::string& k) const {
    ExpectMap(node, k, {"name", "shape", "dtype"});
    TensorSpec t;
    bool have_shape = false;
    for (const auto& kv : node) {
      const std::string field = kv.first.as<std::string>();
      const std::string key = Join(k, field);
      if (field == "name") {
        t.name = String(kv.second, key);
      } else if (field == "shape") {
        if (!kv.second.IsSequence() || kv.second.size() == 0 || kv.second.size() > 8) {
          Fail(kv.second, key, "expected a list of 1 to 8 dimensions");
        }
        for (const auto& d : kv.second) t.shape.push_back(Int(d, key, 1, 1LL << 31));
        have_shape = true;
      } else if (field == "dtype") {
        const auto name = String(kv.second, key);
        const auto dt = DTypeFromName(name);
        if (!dt) Fail(kv.second, key, "unknown dtype '" + name + "' (float32, float16, bfloat16, int64, int32, bool)");
        t.dtype = *dt;
      }
    }
    if (!have_shape) Fail(node, k, "missing 'shape'");
    return t;
  }

  ModelConfig ParseModel(const YAML::Node& node, size_t index) const {
    std::string k = "models[" + std::to_string(index) + "]";
    ExpectMap(node, k, {"id", "path", "device", "default", "sha256", "warmup", "batching", "timeout_ms", "blas_threads",
                        "optimize", "prepack_linear", "compute_dtype", "sessions", "training"});
    ModelConfig m;
    if (!node["id"]) Fail(node, k, "missing 'id'");
    m.id = String(node["id"], k + ".id");
    if (const std::string why = IdProblem(m.id, kMaxModelIdBytes); !why.empty()) Fail(node["id"], k + ".id", why);
    k = "models." + m.id;
    if (!node["path"]) Fail(node, k, "missing 'path'");
    for (const auto& kv : node) {
      const std::string field = kv.first.as<std::string>();
      const std::string key = Join(k, field);
      const YAML::Node& v = kv.second;
      if (field == "path") {
        m.path = String(v, key);
        if (m.path.empty()) Fail(v, key, "must not be empty");
      } else if (field == "device") {
        m.device = String(v, key);
        std::string why;
        if (!IsValidDeviceName(m.device, &why)) Fail(v, key, why);
      } else if (field == "default") {
        m.is_default = Bool(v, key);
      } else if (field == "sha256") {
        m.sha256 = String(v, key);
        bool hex = m.sha256.size() == 64;
        for (char& c : m.sha256) {
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          hex = hex && std::isxdigit(static_cast<unsigned char>(c));
        }
        if (!hex) Fail(v, key, "expected 64 hexadecimal digits");
      } else if (field == "warmup") {
        ExpectMap(v, key, {"inputs", "runs"});
        if (v["runs"]) m.warmup.runs = static_cast<int>(Int(v["runs"], key + ".runs", 0, 1000));
        if (v["inputs"]) {
          if (!v["inputs"].IsSequence()) Fail(v["inputs"], key + ".inputs", "expected a list");
          size_t i = 0;
          for (const auto& in : v["inputs"]) {
            m.warmup.inputs.push_back(ParseTensorSpec(in, key + ".inputs[" + std::to_string(i++) + "]"));
          }
        }
      } else if (field == "batching") {
        ExpectMap(v, key, {"max_batch_size", "max_delay_us", "wait"});
        if (v["max_batch_size"]) m.batching.max_batch_size = static_cast<int>(Int(v["max_batch_size"], key + ".max_batch_size", 1, 4096));
        if (v["max_delay_us"]) m.batching.max_delay_us = Int(v["max_delay_us"], key + ".max_delay_us", 0, 10'000'000);
        if (v["wait"]) {
          const std::string wait = String(v["wait"], key + ".wait");
          if (wait != "adaptive" && wait != "fixed") Fail(v["wait"], key + ".wait", "must be adaptive or fixed");
          m.batching.fixed_wait = wait == "fixed";
        }
      } else if (field == "timeout_ms") {
        m.timeout_ms = Int(v, key, 0, 3'600'000);
      } else if (field == "blas_threads") {
        m.blas_threads = static_cast<int>(Int(v, key, 0, 1024));
      } else if (field == "optimize") {
        m.optimize = Bool(v, key);
      } else if (field == "prepack_linear") {
        m.prepack_linear = Bool(v, key);
      } else if (field == "compute_dtype") {
        const auto name = String(v, key);
        m.compute_dtype = DTypeFromName(name);
        if (!m.compute_dtype) Fail(v, key, "unknown dtype '" + name + "'");
        if (*m.compute_dtype != DType::kFloat32 && *m.compute_dtype != DType::kFloat16 &&
            *m.compute_dtype != DType::kBFloat16) {
          Fail(v, key, "must be a floating dtype (float32, float16 or bfloat16): it converts floating inputs");
        }
      } else if (field == "sessions") {
        ExpectMap(v, key, {"max_sessions", "idle_timeout_s", "max_bytes"});
        if (v["max_sessions"]) m.sessions.max_sessions = static_cast<int>(Int(v["max_sessions"], key + ".max_sessions", 0, 1 << 20));
        if (v["idle_timeout_s"]) m.sessions.idle_timeout_s = Seconds(v["idle_timeout_s"], key + ".idle_timeout_s", true);
        if (v["max_bytes"]) m.sessions.max_bytes = Int(v["max_bytes"], key + ".max_bytes", 0, 1LL << 50);
      } else if (field == "training") {
        ExpectMap(v, key, {"enabled", "optimizer", "learning_rate", "max_learning_rate", "momentum",
                           "checkpoint_path", "max_graphs", "max_graph_bytes", "graph_ttl_s"});
        auto& t = m.training;
        if (v["enabled"]) t.enabled = Bool(v["enabled"], key + ".enabled");
        if (v["optimizer"]) {
          t.optimizer = String(v["optimizer"], key + ".optimizer");
          if (t.optimizer != "sgd" && t.optimizer != "adam" && t.optimizer != "none") {
            Fail(v["optimizer"], key + ".optimizer", "must be sgd, adam or none (gradients only, no updates)");
          }
        }
        if (v["learning_rate"]) {
          t.learning_rate = Double(v["learning_rate"], key + ".learning_rate");
          // The same range a ComputeBackward's own learning_rate must be in.
          if (t.learning_rate < 0 || t.learning_rate > 1e6) {
            Fail(v["learning_rate"], key + ".learning_rate", "must be between 0 and 1000000");
          }
        }
        if (v["max_learning_rate"]) {
          t.max_learning_rate = Double(v["max_learning_rate"], key + ".max_learning_rate");
          if (t.max_learning_rate < 0 || t.max_learning_rate > 1e6) {
            Fail(v["max_learning_rate"], key + ".max_learning_rate", "must be between 0 and 1000000");
          }
        }
        if (t.learning_rate > t.max_learning_rate) {
          Fail(v["learning_rate"] ? v["learning_rate"] : v, key + ".learning_rate",
               "is above training.max_learning_rate");
        }
        if (v["momentum"]) {
          t.momentum = Double(v["momentum"], key + ".momentum");
          if (t.momentum < 0 || t.momentum > 1) Fail(v["momentum"], key + ".momentum", "must be between 0 and 1");
        }
        if (v["checkpoint_path"]) t.checkpoint_path = String(v["checkpoint_path"], key + ".checkpoint_path");
        if (v["max_graphs"]) t.max_graphs = static_cast<int>(Int(v["max_graphs"], key + ".max_graphs", 1, 1 << 20));
        if (v["max_graph_bytes"]) t.max_graph_bytes = Int(v["max_graph_bytes"], key + ".max_graph_bytes", 0, 1LL << 50);
        if (v["graph_ttl_s"]) t.graph_ttl_s = Seconds(v["graph_ttl_s"], key + ".graph_ttl_s", true);
      }
    }
    if (m.optimize && m.training.enabled) {
      Fail(node["optimize"], k + ".optimize",
           "freezes the parameters into constants, so it cannot be combined with training.enabled");
    }
    if (m.prepack_linear && !m.optimize) {
      Fail(node["prepack_linear"], k + ".prepack_linear",
           "rewrites the frozen graph's constant weights, so it needs optimize: true");
    }
    if (m.prepack_linear && m.device.rfind("cpu", 0) != 0) {
      Fail(node["prepack_linear"], k + ".prepack_linear", "packs weights for a CPU kernel: only for a cpu device");
    }
    // An AOTInductor package (.pt2) is compiled for inference: no backward, no cache
    // argument, and no TorchScript graph to optimize.
    const bool package = m.path.size() > 4 && m.path.compare(m.path.size() - 4, 4, ".pt2") == 0;
    if (package) {
      const char* why = "an AOTInductor package (.pt2) holds no backward; train a TorchScript (.pt) file instead";
      if (m.training.enabled) Fail(node["training"], k + ".training.enabled", why);
      if (node["sessions"] && m.sessions.max_sessions > 0) {
        Fail(node["sessions"], k + ".sessions",
             "an AOTInductor package (.pt2) takes no past_key_values, so it has no sessions (set max_sessions: 0 or "
             "serve a TorchScript file)");
      }
      for (const char* key : {"optimize", "prepack_linear"}) {
        if (node[key] && Bool(node[key], Join(k, key))) {
          Fail(node[key], Join(k, key), "applies to TorchScript files; an AOTInductor package is already compiled");
        }
      }
      m.sessions.max_sessions = 0;
    }
    return m;
  }

  Config Parse(const YAML::Node& root, const std::string& base_dir) const {
    Config c;
    if (root.IsNull()) Fail(root, "", "the file is empty");
    ExpectMap(root, "", {"server", "model_root", "devices", "models"});
    if (root["server"]) c.server = ParseServer(root["server"]);
    if (root["model_root"]) {
      c.model_root = String(root["model_root"], "model_root");
      if (c.model_root.empty()) Fail(root["model_root"], "model_root", "must not be empty");
    }
    fs::path root_dir(c.model_root);
    if (root_dir.is_relative()) root_dir = fs::path(base_dir) / root_dir;
    c.model_root = root_dir.lexically_normal().string();
    if (c.model_root.size() > 1 && c.model_root.back() == '/') c.model_root.pop_back();
    auto resolve = [&](std::string* path) {
      if (path->empty()) return;
      fs::path p(*path);
      if (p.is_relative()) p = fs::path(base_dir) / p;
      *path = p.lexically_normal().string();
    };
    if (c.server.tls) {
      resolve(&c.server.tls->cert_file);
      resolve(&c.server.tls->key_file);
      resolve(&c.server.tls->client_ca_file);
    }
    resolve(&c.server.auth.token_file);

    if (const auto devs = root["devices"]) {
      if (!devs.IsMap()) Fail(devs, "devices", "expected a mapping of device name to settings");
      for (const auto& kv : devs) {
        const std::string name = kv.first.as<std::string>();
        std::string why;
        if (!IsValidDeviceName(name, &why)) Fail(kv.first, "devices." + name, why);
        c.devices[name] = ParseDevice(name, kv.second);
      }
    }
    const auto models = root["models"];
    if (!models) Fail(root, "models", "missing: at least one model must be listed");
    if (!models.IsSequence()) Fail(models, "models", "expected a list");
    std::set<std::string> ids;
    const YAML::Node* first_default = nullptr;
    size_t index = 0;
    for (const auto& node : models) {
      ModelConfig m = ParseModel(node, index++);
      if (!ids.insert(m.id).second) Fail(node["id"], "models." + m.id + ".id", "duplicate model id");
      if (m.is_default) {
        if (first_default) Fail(node["default"], "models." + m.id + ".default", "only one model may be the default");
        first_default = &node;
      }
      fs::path p(m.path);
      if (p.is_relative()) p = fs::path(c.model_root) / p;
      m.path = p.lexically_normal().string();
      if (!m.training.checkpoint_path.empty()) {
        fs::path cp(m.training.checkpoint_path);
        if (cp.is_relative()) cp = fs::path(c.model_root) / cp;
        m.training.checkpoint_path = cp.lexically_normal().string();
      }
      std::error_code ec;
      if (!fs::is_regular_file(m.path, ec)) {
        Fail(node["path"], "models." + m.id + ".path", "model file not found: " + m.path);
      }
      if (!c.devices.count(m.device)) c.devices[m.device].name = m.device;
      c.models.push_back(std::move(m));
    }
    if (c.models.empty()) Fail(models, "models", "at least one model must be listed");
    return c;
  }

 private:
  std::string origin_;
};

}  // namespace

ModelChange CompareModels(const ModelConfig& a, const ModelConfig& b) {
  // Every field of ModelConfig, once, with what a reload does when it changes (the
  // reload column of docs/configuration.md). A field left out would be ignored by
  // reloads; tests/config counts the fields to catch that.
  enum Kind { kInPlace, kNewLoad };
  const std::pair<bool, Kind> fields[] = {
      {a.id == b.id, kInPlace},  // the manager compares one id's configs
      {a.path == b.path, kNewLoad},
      {a.device == b.device, kNewLoad},
      {a.is_default == b.is_default, kInPlace},
      {a.sha256 == b.sha256, kNewLoad},
      {a.warmup.inputs == b.warmup.inputs, kNewLoad},
      {a.warmup.runs == b.warmup.runs, kNewLoad},
      {a.batching.max_batch_size == b.batching.max_batch_size, kInPlace},
      {a.batching.max_delay_us == b.batching.max_delay_us, kInPlace},
      {a.batching.fixed_wait == b.batching.fixed_wait, kInPlace},
      {a.timeout_ms == b.timeout_ms, kInPlace},
      {a.blas_threads == b.blas_threads, kNewLoad},
      {a.optimize == b.optimize, kNewLoad},
      {a.prepack_linear == b.prepack_linear, kNewLoad},
      {a.compute_dtype == b.compute_dtype, kNewLoad},
      {a.sessions.max_sessions == b.sessions.max_sessions, kInPlace},
      {a.sessions.idle_timeout_s == b.sessions.idle_timeout_s, kInPlace},
      {a.sessions.max_bytes == b.sessions.max_bytes, kInPlace},
      {a.training.enabled == b.training.enabled, kNewLoad},
      {a.training.optimizer == b.training.optimizer, kNewLoad},
      {a.training.learning_rate == b.training.learning_rate, kNewLoad},
      {a.training.momentum == b.training.momentum, kNewLoad},
      {a.training.max_learning_rate == b.training.max_learning_rate, kInPlace},
      {a.training.checkpoint_path == b.training.checkpoint_path, kNewLoad},
      {a.training.max_graphs == b.training.max_graphs, kInPlace},
      {a.training.max_graph_bytes == b.training.max_graph_bytes, kInPlace},
      {a.training.graph_ttl_s == b.training.graph_ttl_s, kInPlace},
  };
  ModelChange change = ModelChange::kNone;
  for (const auto& [equal, kind] : fields) {
    if (equal) continue;
    if (kind == kNewLoad) return ModelChange::kNewLoad;
    change = ModelChange::kInPlace;
  }
  return change;
}

bool ModelConfig::operator==(const ModelConfig& o) const { return CompareModels(*this, o) == ModelChange::kNone; }

const ModelConfig* Config::FindModel(const std::string& id) const {
  for (const auto& m : models) {
    if (m.id == id) return &m;
  }
  return nullptr;
}

const ModelConfig* Config::DefaultModel() const {
  for (const auto& m : models) {
    if (m.is_default) return &m;
  }
  return models.size() == 1 ? &models.front() : nullptr;
}

const DeviceConfig& Config::Device(const std::string& name) const {
  static const DeviceConfig kDefault;
  auto it = devices.find(name);
  return it == devices.end() ? kDefault : it->second;
}

bool IsValidDeviceName(const std::string& name, std::string* why) {
  if (name == "cpu") return true;
  if (name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() <= 8) {
    bool digits = true;
    for (size_t i = 5; i < name.size(); ++i) digits = digits && std::isdigit(static_cast<unsigned char>(name[i]));
    if (digits) return true;
  }
  if (why) *why = "unknown device '" + name + "' (expected \"cpu\" or \"cuda:N\")";
  return false;
}

StatusOr<Config> ParseConfig(const std::string& yaml_text, const std::string& origin, const std::string& base_dir) {
  Parser parser(origin);
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    Config c = parser.Parse(root, base_dir);
    c.source_path = origin;
    return c;
  } catch (const ConfigError& e) {
    return InvalidArgument(e.message);
  } catch (const YAML::Exception& e) {
    std::ostringstream os;
    os << origin;
    if (e.mark.line >= 0) os << ":" << (e.mark.line + 1) << ":" << (e.mark.column + 1);
    os << ": " << e.msg;
    return InvalidArgument(os.str());
  }
}

StatusOr<Config> LoadConfigFile(const std::string& path) {
  auto text = ReadWholeFile("config file", path);
  if (!text.ok()) return text.status();
  const std::string base = fs::absolute(fs::path(path)).parent_path().string();
  return ParseConfig(*text, path, base);
}

}  // namespace splitlearnd
