#include "config/config.h"

#include "tests/support/catch.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpus.h"
#include "tests/support/temp_dir.h"

using namespace splitlearnd;
namespace fs = std::filesystem;

namespace {

// A temp dir with one model file, m.pt.
struct TempDir : testing::TempDir {
  TempDir() { Write("m.pt", "x"); }
};

// Model paths resolve inside the temp dir unless the text sets its own model_root.
StatusOr<Config> Parse(const TempDir& dir, const std::string& yaml) {
  if (yaml.find("model_root") != std::string::npos) return ParseConfig(yaml, "test.yaml", dir.path.string());
  return ParseConfig(yaml + "model_root: " + dir.path.string() + "\n", "test.yaml", dir.path.string());
}

}  // namespace

TEST_CASE("a minimal config fills defaults and resolves paths") {
  TempDir dir;
  auto c = Parse(dir, "model_root: .\nmodels:\n  - id: a\n    path: m.pt\n");
  REQUIRE(c.ok());
  CHECK(c->server.listen == "0.0.0.0:50051");
  REQUIRE(c->models.size() == 1);
  CHECK(c->models[0].path == (dir.path / "m.pt").string());
  CHECK(c->models[0].device == "cpu");
  CHECK(c->devices.count("cpu") == 1);
  CHECK(c->DefaultModel() == &c->models[0]);  // the only model is the default
}

TEST_CASE("every documented section parses") {
  TempDir dir;
  auto c = Parse(dir, R"(
server:
  listen: "127.0.0.1:0"
  max_message_bytes: 1048576
  drain_timeout_s: 2.5
  watch_config: false
  log_level: debug
model_root: .
devices:
  cpu: {intra_op_threads: 1, blas_threads: 2, queue_capacity: 4}
models:
  - id: a
    path: m.pt
    default: true
    warmup: {inputs: [{shape: [1, 10, 768], dtype: float16}], runs: 3}
    batching: {max_batch_size: 8, max_delay_us: 500}
    timeout_ms: 100
    blas_threads: 1
    sessions: {max_sessions: 2, idle_timeout_s: 1.5, max_bytes: 1000}
    training: {enabled: true, optimizer: adam, learning_rate: 0.01}
  - id: b
    path: m.pt
    device: "cuda:1"
    optimize: true
  - {id: c, path: m.pt, optimize: true, prepack_linear: true, batching: {max_batch_size: 4, wait: fixed}}
)");
  REQUIRE(c.ok());
  CHECK(c->server.drain_timeout_s == 2.5);
  CHECK(c->Device("cpu").queue_capacity == 4);
  CHECK(c->models[0].warmup.inputs[0].dtype == DType::kFloat16);
  CHECK(c->models[0].warmup.inputs[0].shape == std::vector<int64_t>{1, 10, 768});
  CHECK(c->models[0].batching.max_batch_size == 8);
  CHECK(c->models[0].batching.max_delay_us == 500);
  CHECK_FALSE(c->models[0].batching.fixed_wait);  // adaptive unless asked
  CHECK(c->models[2].batching.fixed_wait);
  CHECK(c->models[0].training.optimizer == "adam");
  CHECK(c->models[0].blas_threads == 1);
  CHECK(c->models[1].blas_threads == 0);
  CHECK_FALSE(c->models[0].optimize);
  CHECK(c->models[1].optimize);
  CHECK_FALSE(c->models[1].prepack_linear);
  CHECK(c->models[2].prepack_linear);
  CHECK(c->models[1].device == "cuda:1");
  CHECK(c->DefaultModel()->id == "a");
}

TEST_CASE("errors name file, line, column and key") {
  TempDir dir;
  SECTION("unknown key") {
    auto c = Parse(dir, "models:\n  - id: a\n    path: m.pt\n    bogus: 1\n");
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(c.status().message(), Catch::Contains("test.yaml:4:5") && Catch::Contains("models[0].bogus") &&
                                         Catch::Contains("unknown key"));
  }
  SECTION("wrong type") {
    auto c = Parse(dir, "server:\n  drain_timeout_s: soon\nmodels:\n  - {id: a, path: m.pt}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("test.yaml:2:20") && Catch::Contains("server.drain_timeout_s"));
  }
  SECTION("bad device") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt, device: tpu}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models.a.device") && Catch::Contains("tpu"));
  }
  SECTION("optimize with training") {
    auto c = Parse(dir, "models:\n  - id: a\n    path: m.pt\n    optimize: true\n    training: {enabled: true}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("test.yaml:4") && Catch::Contains("models.a.optimize") &&
                                         Catch::Contains("training"));
  }
  SECTION("prepack_linear without optimize") {
    auto c = Parse(dir, "models:\n  - id: a\n    path: m.pt\n    prepack_linear: true\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("test.yaml:4") && Catch::Contains("models.a.prepack_linear") &&
                                         Catch::Contains("optimize: true"));
  }
  SECTION("prepack_linear on a GPU") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt, device: \"cuda:0\", optimize: true, prepack_linear: true}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models.a.prepack_linear") && Catch::Contains("cpu device"));
  }
  SECTION("duplicate id") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt}\n  - {id: a, path: m.pt}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("test.yaml:3") && Catch::Contains("duplicate"));
  }
  SECTION("missing model file") {
    auto c = Parse(dir, "models:\n  - {id: a, path: nope.pt}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models.a.path") && Catch::Contains("not found"));
  }
  SECTION("two defaults") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt, default: true}\n  - {id: b, path: m.pt, default: true}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models.b.default"));
  }
  SECTION("out of range") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt, batching: {max_batch_size: 0}}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("max_batch_size"));
  }
  SECTION("unknown batching wait") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt, batching: {max_batch_size: 2, wait: forever}}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models.a.batching.wait") && Catch::Contains("adaptive or fixed"));
  }
  SECTION("syntax error") {
    auto c = Parse(dir, "models: [\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::StartsWith("test.yaml:"));
  }
  SECTION("no models") {
    auto c = Parse(dir, "server: {listen: ':1'}\n");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models"));
  }
}

TEST_CASE("numbers that would fail later or mean nothing are refused when the config is read") {
  TempDir dir;
  struct Bad {
    const char* yaml;
    const char* key;
    const char* says;
  };
  const Bad cases[] = {
      {"server: {drain_timeout_s: .inf}\nmodels:\n  - {id: a, path: m.pt}\n", "server.drain_timeout_s", "finite"},
      {"server: {drain_grace_s: .nan}\nmodels:\n  - {id: a, path: m.pt}\n", "server.drain_grace_s", "finite"},
      {"server: {drain_timeout_s: 1e12}\nmodels:\n  - {id: a, path: m.pt}\n", "server.drain_timeout_s", "at most"},
      {"models:\n  - {id: a, path: m.pt, sessions: {idle_timeout_s: .nan}}\n", "idle_timeout_s", "finite"},
      {"models:\n  - {id: a, path: m.pt, training: {graph_ttl_s: .inf}}\n", "graph_ttl_s", "finite"},
      {"models:\n  - {id: a, path: m.pt, training: {enabled: true, learning_rate: -0.1}}\n", "learning_rate",
       "between"},
      {"models:\n  - {id: a, path: m.pt, training: {enabled: true, learning_rate: .nan}}\n", "learning_rate",
       "finite"},
      {"models:\n  - {id: a, path: m.pt, training: {enabled: true, momentum: -1}}\n", "momentum", "between"},
      {"models:\n  - {id: a, path: m.pt, training: {enabled: true, max_learning_rate: -1}}\n", "max_learning_rate",
       "between"},
      {"models:\n  - {id: a, path: m.pt, training: {enabled: true, learning_rate: 2}}\n", "learning_rate",
       "max_learning_rate"},
      {"models:\n  - {id: a, path: m.pt, compute_dtype: int64}\n", "compute_dtype", "floating"},
      {"models:\n  - {id: a, path: m.pt, compute_dtype: bool}\n", "compute_dtype", "floating"},
  };
  for (const Bad& b : cases) {
    INFO(b.yaml);
    auto c = Parse(dir, b.yaml);
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains(b.key) && Catch::Contains(b.says));
  }
  // The edges stay accepted.
  auto ok = Parse(dir,
                  "server: {drain_timeout_s: 0, drain_grace_s: 10000000}\nmodels:\n  - {id: a, path: m.pt, "
                  "compute_dtype: bfloat16, training: {enabled: true, learning_rate: 0, momentum: 1}}\n");
  INFO(ok.status().ToString());
  CHECK(ok.ok());
}

TEST_CASE("device names") {
  CHECK(IsValidDeviceName("cpu"));
  CHECK(IsValidDeviceName("cuda:0"));
  CHECK(IsValidDeviceName("cuda:12"));
  CHECK_FALSE(IsValidDeviceName("cuda"));
  CHECK_FALSE(IsValidDeviceName("cuda:"));
  CHECK_FALSE(IsValidDeviceName("cuda:x"));
  CHECK_FALSE(IsValidDeviceName("gpu"));
}

TEST_CASE("a missing config file is NOT_FOUND") {
  auto c = LoadConfigFile("/nonexistent/splitlearnd.yaml");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kNotFound);
}

TEST_CASE("server.tls and server.auth parse, with defaults and paths resolved against the config's folder") {
  TempDir dir;
  SECTION("absent: plaintext, no tokens, management needs a token over TCP") {
    auto c = Parse(dir, "models:\n  - {id: a, path: m.pt}\n");
    REQUIRE(c.ok());
    CHECK_FALSE(c->server.tls.has_value());
    CHECK(c->server.auth.token_file.empty());
    CHECK(c->server.auth.compute == AuthMode::kNone);
    CHECK(c->server.auth.management == AuthMode::kToken);
    CHECK_FALSE(c->server.auth.management_unix_uids.has_value());
    CHECK_FALSE(c->server.auth.management_unix_groups.has_value());
  }
  SECTION("everything set") {
    auto c = Parse(dir, R"(
server:
  tls: {cert_file: tls/server.pem, key_file: /etc/k.pem, client_ca_file: ca.pem, require_client_cert: false}
  auth:
    token_file: tokens
    compute: none
    management: none
    management_unix_uids: [0, 1000]
    management_unix_groups: [splitlearnd, adm]
models:
  - {id: a, path: m.pt}
)");
    REQUIRE(c.ok());
    REQUIRE(c->server.tls.has_value());
    CHECK(c->server.tls->cert_file == (dir.path / "tls/server.pem").string());
    CHECK(c->server.tls->key_file == "/etc/k.pem");
    CHECK(c->server.tls->client_ca_file == (dir.path / "ca.pem").string());
    CHECK_FALSE(c->server.tls->require_client_cert);
    CHECK(c->server.auth.token_file == (dir.path / "tokens").string());
    CHECK(c->server.auth.compute == AuthMode::kNone);
    CHECK(c->server.auth.management == AuthMode::kNone);
    CHECK(*c->server.auth.management_unix_uids == std::vector<uint32_t>{0, 1000});
    CHECK(*c->server.auth.management_unix_groups == std::vector<std::string>{"splitlearnd", "adm"});
  }
  SECTION("a client CA requires client certificates unless told otherwise") {
    auto c = Parse(dir, "server:\n  tls: {cert_file: c, key_file: k, client_ca_file: ca}\nmodels:\n  - {id: a, path: m.pt}\n");
    REQUIRE(c.ok());
    CHECK(c->server.tls->require_client_cert);
  }
  SECTION("a token file turns compute tokens on") {
    auto c = Parse(dir, "server:\n  auth: {token_file: t}\nmodels:\n  - {id: a, path: m.pt}\n");
    REQUIRE(c.ok());
    CHECK(c->server.auth.compute == AuthMode::kToken);
    CHECK(c->server.auth.management == AuthMode::kToken);
  }
  SECTION("empty lists allow no uid and no group") {
    auto c = Parse(dir, "server:\n  auth: {management_unix_uids: [], management_unix_groups: []}\n"
                        "models:\n  - {id: a, path: m.pt}\n");
    REQUIRE(c.ok());
    REQUIRE(c->server.auth.management_unix_uids.has_value());
    CHECK(c->server.auth.management_unix_uids->empty());
    CHECK(c->server.auth.management_unix_groups->empty());
  }
}

TEST_CASE("server.tls and server.auth errors name file, line, column and key") {
  TempDir dir;
  auto error = [&](const std::string& server) {
    auto c = Parse(dir, "server:\n" + server + "models:\n  - {id: a, path: m.pt}\n");
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == StatusCode::kInvalidArgument);
    return c.status().message();
  };
  CHECK_THAT(error("  tls: {key_file: k}\n"), Catch::Contains("test.yaml:2:8") && Catch::Contains("'server.tls'") &&
                                                    Catch::Contains("cert_file"));
  CHECK_THAT(error("  tls: {cert_file: c}\n"), Catch::Contains("'server.tls'") && Catch::Contains("key_file"));
  CHECK_THAT(error("  tls: {cert_file: c, key_file: k, require_client_cert: true}\n"),
             Catch::Contains("test.yaml:2:57") && Catch::Contains("server.tls.require_client_cert") &&
                 Catch::Contains("client_ca_file"));
  CHECK_THAT(error("  tls: {cert_file: c, key_file: k, ca: x}\n"),
             Catch::Contains("server.tls.ca") && Catch::Contains("unknown key"));
  CHECK_THAT(error("  tls: {cert_file: '', key_file: k}\n"),
             Catch::Contains("server.tls.cert_file") && Catch::Contains("must not be empty"));
  CHECK_THAT(error("  auth: {compute: token}\n"),
             Catch::Contains("test.yaml:2:19") && Catch::Contains("server.auth.compute") &&
                 Catch::Contains("token_file"));
  CHECK_THAT(error("  auth: {compute: maybe}\n"),
             Catch::Contains("server.auth.compute") && Catch::Contains("token or none"));
  CHECK_THAT(error("  auth: {management: off}\n"),
             Catch::Contains("server.auth.management") && Catch::Contains("token or none"));
  CHECK_THAT(error("  auth: {management_unix_uids: [-1]}\n"), Catch::Contains("server.auth.management_unix_uids"));
  CHECK_THAT(error("  auth: {management_unix_uids: 0}\n"),
             Catch::Contains("server.auth.management_unix_uids") && Catch::Contains("list"));
  CHECK_THAT(error("  auth: {management_unix_groups: [[x]]}\n"), Catch::Contains("server.auth.management_unix_groups"));
  CHECK_THAT(error("  auth: {tokens: x}\n"), Catch::Contains("server.auth.tokens") && Catch::Contains("unknown key"));
}

TEST_CASE("CPU lists: the kernel's notation or a YAML list, for the server and each device") {
  TempDir dir;
  auto c = Parse(dir, R"(
server: {cpus: "0-1,3"}
devices:
  cpu: {cpus: [2, 1, 2]}
models:
  - {id: a, path: m.pt}
)");
  REQUIRE(c.ok());
  CHECK(c->server.cpus == std::vector<int>{0, 1, 3});
  CHECK(c->Device("cpu").cpus == std::vector<int>{1, 2});
  CHECK(Parse(dir, "devices:\n  cpu: {cpus: 5}\nmodels:\n  - {id: a, path: m.pt}\n")->Device("cpu").cpus ==
        std::vector<int>{5});
  CHECK(Parse(dir, "models:\n  - {id: a, path: m.pt}\n")->server.cpus.empty());

  for (const char* bad : {"\"3-1\"", "\"x\"", "\"1,,2\"", "[]", "\"4096\"", "[-1]"}) {
    INFO(bad);
    auto e = Parse(dir, std::string("devices:\n  cpu: {cpus: ") + bad + "}\nmodels:\n  - {id: a, path: m.pt}\n");
    REQUIRE_FALSE(e.ok());
    CHECK_THAT(e.status().message(), Catch::Contains("devices.cpu.cpus"));
  }
}

TEST_CASE("CPU list parsing and formatting round-trip") {
  CHECK(ParseCpuList("7").value() == std::vector<int>{7});
  CHECK(ParseCpuList(" 0 - 2 , 5").ok() == false);  // spaces inside a range are not the kernel's notation
  CHECK(ParseCpuList("0-2, 5").value() == std::vector<int>{0, 1, 2, 5});
  CHECK(FormatCpuList({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8");
  CHECK(FormatCpuList({}) == "");
  for (const std::string text : {"0", "0-3", "1,3,5-9", "0-1023"}) {
    CHECK(FormatCpuList(ParseCpuList(text).value()) == text);
  }
  CHECK_THAT(ParseCpuList("1024").status().message(), Catch::Contains("out of range"));
  CHECK_FALSE(ParseCpuList("").ok());
  // The process's own CPUs are allowed; a CPU above them is refused with both named.
  const std::vector<int> allowed = AllowedCpus();
  REQUIRE_FALSE(allowed.empty());
  CHECK(CheckCpusAllowed(allowed, "x").ok());
  auto refused = CheckCpusAllowed({1023}, "server.cpus");
  if (allowed.back() < 1023) {
    CHECK_THAT(refused.message(), Catch::Contains("server.cpus") && Catch::Contains("1023") &&
                                      Catch::Contains(FormatCpuList(allowed)));
  }
}

TEST_CASE("model ids: letters, digits, '-', '_' and '.', 1 to 128 of them") {
  TempDir dir;
  auto model = [&](const std::string& id) { return Parse(dir, "models:\n  - {id: \"" + id + "\", path: m.pt}\n"); };
  CHECK(model("trunk-v2_1.0").ok());
  CHECK(model(std::string(128, 'a')).ok());
  CHECK_THAT(model(std::string(129, 'a')).status().message(),
             Catch::Contains("models[0].id") && Catch::Contains("must be 1 to 128 characters"));
  for (const char* bad : {"a b", "a/b", "caf\xc3\xa9", ""}) {
    INFO(bad);
    auto c = model(bad);
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.status().message(), Catch::Contains("models[0].id"));
  }
}

namespace {

// The number of fields of an aggregate: the most initializers T{...} takes.
struct AnyField {
  template <typename T>
  operator T() const;
};
template <typename T, typename Seq, typename = void>
struct BraceInitializable : std::false_type {};
template <typename T, size_t... I>
struct BraceInitializable<T, std::index_sequence<I...>, std::void_t<decltype(T{(void(I), AnyField{})...})>>
    : std::true_type {};
template <typename T, size_t N = 0>
constexpr size_t FieldCount() {
  if constexpr (BraceInitializable<T, std::make_index_sequence<N + 1>>::value) {
    return FieldCount<T, N + 1>();
  } else {
    return N;
  }
}

struct FieldChange {
  const char* field;
  ModelChange expected;
  std::function<void(ModelConfig&)> change;
};

}  // namespace

TEST_CASE("CompareModels knows every ModelConfig field: a change of any one is seen, and of the right kind") {
  ModelConfig base;
  base.id = "a";
  base.path = "/models/a.pt";
  base.warmup.inputs = {TensorSpec{"x", {1, 4}, DType::kFloat32}};
  constexpr auto kNew = ModelChange::kNewLoad;
  constexpr auto kInPlace = ModelChange::kInPlace;
  // One row per leaf field, with the reload column of docs/configuration.md.
  const std::vector<FieldChange> fields = {
      {"id", kInPlace, [](ModelConfig& m) { m.id = "b"; }},
      {"path", kNew, [](ModelConfig& m) { m.path = "/models/b.pt"; }},
      {"device", kNew, [](ModelConfig& m) { m.device = "cuda:0"; }},
      {"default", kInPlace, [](ModelConfig& m) { m.is_default = true; }},
      {"sha256", kNew, [](ModelConfig& m) { m.sha256 = std::string(64, 'a'); }},
      {"warmup.inputs", kNew, [](ModelConfig& m) { m.warmup.inputs.push_back(m.warmup.inputs[0]); }},
      {"warmup.runs", kNew, [](ModelConfig& m) { m.warmup.runs = 3; }},
      {"batching.max_batch_size", kInPlace, [](ModelConfig& m) { m.batching.max_batch_size = 8; }},
      {"batching.max_delay_us", kInPlace, [](ModelConfig& m) { m.batching.max_delay_us = 500; }},
      {"batching.wait", kInPlace, [](ModelConfig& m) { m.batching.fixed_wait = true; }},
      {"timeout_ms", kInPlace, [](ModelConfig& m) { m.timeout_ms = 100; }},
      {"blas_threads", kNew, [](ModelConfig& m) { m.blas_threads = 2; }},
      {"optimize", kNew, [](ModelConfig& m) { m.optimize = true; }},
      {"prepack_linear", kNew, [](ModelConfig& m) { m.prepack_linear = true; }},
      {"compute_dtype", kNew, [](ModelConfig& m) { m.compute_dtype = DType::kBFloat16; }},
      {"sessions.max_sessions", kInPlace, [](ModelConfig& m) { m.sessions.max_sessions = 1; }},
      {"sessions.idle_timeout_s", kInPlace, [](ModelConfig& m) { m.sessions.idle_timeout_s = 1; }},
      {"sessions.max_bytes", kInPlace, [](ModelConfig& m) { m.sessions.max_bytes = 1; }},
      {"training.enabled", kNew, [](ModelConfig& m) { m.training.enabled = true; }},
      {"training.optimizer", kNew, [](ModelConfig& m) { m.training.optimizer = "adam"; }},
      {"training.learning_rate", kNew, [](ModelConfig& m) { m.training.learning_rate = 0.5; }},
      {"training.momentum", kNew, [](ModelConfig& m) { m.training.momentum = 0.9; }},
      {"training.max_learning_rate", kInPlace, [](ModelConfig& m) { m.training.max_learning_rate = 0.5; }},
      {"training.checkpoint_path", kNew, [](ModelConfig& m) { m.training.checkpoint_path = "/c.pt"; }},
      {"training.max_graphs", kInPlace, [](ModelConfig& m) { m.training.max_graphs = 1; }},
      {"training.max_graph_bytes", kInPlace, [](ModelConfig& m) { m.training.max_graph_bytes = 1; }},
      {"training.graph_ttl_s", kInPlace, [](ModelConfig& m) { m.training.graph_ttl_s = 1; }},
  };
  const std::vector<FieldChange> spec_fields = {
      {"warmup.inputs[].name", kNew, [](ModelConfig& m) { m.warmup.inputs[0].name = "y"; }},
      {"warmup.inputs[].shape", kNew, [](ModelConfig& m) { m.warmup.inputs[0].shape = {1, 5}; }},
      {"warmup.inputs[].dtype", kNew, [](ModelConfig& m) { m.warmup.inputs[0].dtype = DType::kInt64; }},
  };
  // A field added to these structs must get a row above, and then a line in
  // CompareModels, or its row fails below.
  const size_t leaf_fields = FieldCount<ModelConfig>() - 4 + FieldCount<WarmupConfig>() +
                             FieldCount<BatchingConfig>() + FieldCount<SessionConfig>() +
                             FieldCount<TrainingConfig>();
  CHECK(fields.size() == leaf_fields);
  CHECK(spec_fields.size() == FieldCount<TensorSpec>());

  CHECK(CompareModels(base, base) == ModelChange::kNone);
  for (const auto* table : {&fields, &spec_fields}) {
    for (const FieldChange& f : *table) {
      INFO(f.field);
      ModelConfig changed = base;
      f.change(changed);
      CHECK(CompareModels(base, changed) == f.expected);
      CHECK(base != changed);
      CHECK(SameLoad(base, changed) == (f.expected == ModelChange::kInPlace));
    }
  }
  // A change that needs a load outweighs one that does not.
  ModelConfig both = base;
  both.timeout_ms = 5;
  both.optimize = true;
  CHECK(CompareModels(base, both) == ModelChange::kNewLoad);
}
