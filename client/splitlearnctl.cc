// splitlearnctl: talk to a running splitlearnd (and, for old scripts, make demo shards
// through splitlearnd make-demo-shard).
#include <CLI/CLI.hpp>
#include <unistd.h>
#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <thread>

#include "client/client.h"
#include "common/shape.h"
#include "management.grpc.pb.h"

namespace splitlearnd {
namespace {

int Fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

// make-demo-shard belongs to splitlearnd, which links libtorch (splitlearnctl does
// not): runs `splitlearnd make-demo-shard ARGS...` with the splitlearnd installed
// beside this program, else the one of its build tree (daemon/ beside client/), else
// the one on PATH. Returns only when none could be run.
int ForwardMakeDemoShard(const std::vector<std::string>& args) {
  std::vector<std::string> argv_text{"splitlearnd", "make-demo-shard"};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::string folder;
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    folder.assign(self, static_cast<size_t>(n));
    const size_t slash = folder.find_last_of('/');
    folder.resize(slash == std::string::npos ? 0 : slash);
  }
  for (const std::string& candidate : {folder + "/splitlearnd", folder + "/../daemon/splitlearnd"}) {
    if (folder.empty() || ::access(candidate.c_str(), X_OK) != 0) continue;
    ::execv(candidate.c_str(), argv.data());
    return Fail(Internal("cannot run " + candidate + ": " + std::strerror(errno)));
  }
  ::execvp("splitlearnd", argv.data());
  return Fail(NotFound("make-demo-shard is run by splitlearnd, and no splitlearnd was found beside " +
                       (folder.empty() ? std::string("this program") : folder) + " or on PATH (" +
                       std::strerror(errno) + "); run `splitlearnd make-demo-shard` where it is installed"));
}

// A checksum of the answer's values (as float64), for comparing runs at a glance.
double Checksum(const Tensor& t) {
  double sum = 0;
  const size_t n = t.data.size() / DTypeSize(t.dtype);
  for (size_t i = 0; i < n; ++i) {
    const char* p = t.data.data() + i * DTypeSize(t.dtype);
    switch (t.dtype) {
      case DType::kFloat32: { float v; std::memcpy(&v, p, 4); sum += v; break; }
      case DType::kInt64: { int64_t v; std::memcpy(&v, p, 8); sum += static_cast<double>(v); break; }
      case DType::kInt32: { int32_t v; std::memcpy(&v, p, 4); sum += v; break; }
      case DType::kBool: sum += (*p != 0); break;
      case DType::kFloat16: case DType::kBFloat16: {
        uint16_t h; std::memcpy(&h, p, 2);
        uint32_t bits;
        if (t.dtype == DType::kBFloat16) {
          bits = static_cast<uint32_t>(h) << 16;
        } else {
          const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
          if (exp == 0) { float v = std::ldexp(static_cast<float>(mant), -24); sum += sign ? -v : v; break; }
          bits = sign | ((exp == 31 ? 255 : exp + 112) << 23) | (mant << 13);
        }
        float v; std::memcpy(&v, &bits, 4); sum += v; break;
      }
    }
  }
  return sum;
}


// --- management commands -------------------------------------------------------

namespace mgmt = splitlearn::manage;

constexpr const char* kDefaultManage = "unix:/run/splitlearnd/manage.sock";

std::string Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok()) return "{}\n";
  return out;
}

std::string Bytes(int64_t n) {
  if (n <= 0) return "-";
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms <= 0) return "never";
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  int64_t s = std::max<int64_t>(0, (now - unix_ms) / 1000);
  char buf[32];
  if (s < 120) std::snprintf(buf, sizeof buf, "%llds ago", static_cast<long long>(s));
  else if (s < 7200) std::snprintf(buf, sizeof buf, "%lldm ago", static_cast<long long>(s / 60));
  else if (s < 172800) std::snprintf(buf, sizeof buf, "%lldh ago", static_cast<long long>(s / 3600));
  else std::snprintf(buf, sizeof buf, "%lldd ago", static_cast<long long>(s / 86400));
  return buf;
}

std::string When(int64_t unix_ms) {
  if (unix_ms <= 0) return "never";
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string(buf) + " (" + Ago(unix_ms) + ")";
}

std::string StateName(mgmt::ModelState s) {
  const std::string n = mgmt::ModelState_Name(s);
  return n.empty() ? "?" : n;
}

// Columns padded to their widest cell; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return;
  std::vector<size_t> width(rows.front().size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void PrintModels(const google::protobuf::RepeatedPtrField<mgmt::ModelInfo>& models,
                 const google::protobuf::RepeatedPtrField<mgmt::ModelInfo>& draining) {
  std::vector<std::vector<std::string>> rows{
      {"ID", "STATE", "VERSION", "DEVICE", "PARAMS", "LAST USED", "SINCE", "PATH / LAST ERROR"}};
  auto row = [&](const mgmt::ModelInfo& m) {
    std::string id = m.id();
    if (m.is_default()) id += " *";
    if (!m.from_config()) id += " (runtime)";
    std::string state = StateName(m.state());
    if (m.load_pending() && m.state() == mgmt::READY) state += "+LOADING";
    std::string tail = m.path();
    if (!m.last_error().empty()) tail += "  error: " + m.last_error();
    rows.push_back({id, state, m.version() ? std::to_string(m.version()) : "-", m.device(),
                    Bytes(m.parameter_bytes()), Ago(m.last_used_unix_ms()), Ago(m.state_since_unix_ms()), tail});
  };
  for (const auto& m : models) row(m);
  for (const auto& m : draining) row(m);
  PrintTable(rows);
}

void PrintModel(const mgmt::ModelInfo& m) {
  std::printf("id:           %s%s%s\n", m.id().c_str(), m.is_default() ? " (default)" : "",
              m.from_config() ? "" : " (loaded at run time, not in the config)");
  std::printf("state:        %s since %s%s\n", StateName(m.state()).c_str(), When(m.state_since_unix_ms()).c_str(),
              m.load_pending() ? "; a new version is loading" : "");
  std::printf("version:      %llu\n", static_cast<unsigned long long>(m.version()));
  std::printf("device:       %s\n", m.device().c_str());
  std::printf("path:         %s\n", m.path().c_str());
  if (!m.sha256().empty()) std::printf("sha256:       %s\n", m.sha256().c_str());
  std::printf("parameters:   %s\n", Bytes(m.parameter_bytes()).c_str());
  std::printf("loaded:       %s in %.2f s\n", When(m.loaded_at_unix_ms()).c_str(), m.load_seconds());
  std::printf("last used:    %s\n", When(m.last_used_unix_ms()).c_str());
  if (m.state() == mgmt::READY) {
    std::printf("timeout:      %s\n", m.timeout_ms() ? (std::to_string(m.timeout_ms()) + " ms").c_str() : "none");
    std::printf("max batch:    %d\n", m.max_batch_size());
  }
  if (!m.last_error().empty()) std::printf("last error:   %s\n", m.last_error().c_str());
}

void PrintReload(const mgmt::ReloadResult& r) {
  std::printf("reload %s: %s\n", r.ok() ? "OK" : "FAILED", r.message().c_str());
  std::printf("  trigger %s, %s, %.2f s, file %s\n", r.trigger().c_str(), When(r.time_unix_ms()).c_str(), r.seconds(),
              r.config_file().c_str());
  for (const auto& w : r.warnings()) std::printf("  warning: %s\n", w.c_str());
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Per model: requests, errors, latency quantiles (from the daemon's live histograms)
// and sessions. With `earlier` (an older answer) and `seconds` apart, adds rates.
void PrintTraffic(const google::protobuf::RepeatedPtrField<mgmt::ModelInfo>& models,
                  const google::protobuf::RepeatedPtrField<mgmt::ModelInfo>* earlier, double seconds) {
  std::vector<std::vector<std::string>> rows{{"MODEL", "REQUESTS", "ERRORS", "P50 ms", "P99 ms", "QUEUE P50 ms",
                                              "COMPUTE P50 ms", "SESSIONS"}};
  if (earlier) rows.front().insert(rows.front().begin() + 2, "REQ/S");
  for (const auto& m : models) {
    std::vector<std::string> row{m.id(), std::to_string(m.requests()), std::to_string(m.errors()),
                                 Fixed(m.latency_p50_ms(), 3), Fixed(m.latency_p99_ms(), 3),
                                 Fixed(m.queue_p50_ms(), 3), Fixed(m.compute_p50_ms(), 3),
                                 std::to_string(m.sessions()) + " (" + Bytes(m.session_bytes()) + ")"};
    if (earlier) {
      uint64_t before = 0;
      for (const auto& e : *earlier) {
        if (e.id() == m.id()) before = e.requests();
      }
      row.insert(row.begin() + 2, Fixed(seconds > 0 ? static_cast<double>(m.requests() - before) / seconds : 0, 1));
    }
    rows.push_back(std::move(row));
  }
  PrintTable(rows);
}

void PrintStatus(const mgmt::StatusResponse& s) {
  std::printf("splitlearnd %s, pid %lld, up %.0f s%s\n", s.version().c_str(), static_cast<long long>(s.pid()),
              s.uptime_seconds(), s.draining() ? ", DRAINING" : "");
  std::printf("config:      %s (applied %s)%s\n", s.config_file().c_str(), When(s.config_applied_unix_ms()).c_str(),
              s.watch_config() ? ", watched" : "");
  std::printf("model root:  %s\n", s.model_root().c_str());
  std::printf("listening:   %s; management %s\n", s.listen().c_str(), s.management_listen().c_str());
  std::printf("log level:   %s\n", s.log_level().c_str());
  std::printf("workers:     %s\n", s.workers_alive() ? "all alive" : "A DEVICE WORKER IS DEAD");
  std::printf("last ");
  PrintReload(s.last_reload());
  std::printf("\nmodels:\n");
  PrintModels(s.models(), s.draining_versions());
  std::printf("\ntraffic since start:\n");
  PrintTraffic(s.models(), nullptr, 0);
  std::printf("\ndevices:\n");
  std::vector<std::vector<std::string>> rows{
      {"DEVICE", "WORKER", "QUEUE", "REQUESTS", "BATCHES", "BATCH MEAN/P99", "MODELS", "MEMORY", "LIMITS"}};
  for (const auto& d : s.devices()) {
    std::string limits;
    if (d.max_models()) limits += "max_models " + std::to_string(d.max_models());
    if (d.memory_budget_bytes()) limits += (limits.empty() ? "" : ", ") + std::string("budget ") + Bytes(d.memory_budget_bytes());
    if (d.evict_lru()) limits += (limits.empty() ? "" : ", ") + std::string("evict_lru");
    rows.push_back({d.name(), d.worker_alive() ? "alive" : "DEAD",
                    std::to_string(d.queue_depth()) + "/" + std::to_string(d.queue_capacity()),
                    std::to_string(d.requests_run()), std::to_string(d.batches_run()),
                    d.batches_run() ? Fixed(d.mean_batch_size(), 2) + " / " + Fixed(d.p99_batch_size(), 1) : "-",
                    std::to_string(d.models()),
                    Bytes(d.memory_used_bytes()), limits.empty() ? "-" : limits});
  }
  PrintTable(rows);
}

int FailGrpc(const grpc::Status& s, const std::string& address) {
  std::string msg = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    msg += " (is splitlearnd running, with server.management_listen: " + address + "?";
    if (address.rfind("unix:", 0) == 0) msg += " Is your user allowed by server.auth.management_unix_uids/groups?";
    msg += ")";
  }
  return Fail(Status(static_cast<StatusCode>(s.error_code()), msg));
}

}  // namespace
}  // namespace splitlearnd

int main(int argc, char** argv) {
  using namespace splitlearnd;
  CLI::App app{"splitlearnctl: talk to splitlearnd"};
  app.require_subcommand(1);
  std::string target = "127.0.0.1:50051";
  int timeout_ms = 30000;
  app.add_option("-a,--address", target, "address of the compute service")->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "deadline of each call (load, reload, reload-config: 10 min unless set)")
      ->capture_default_str();
  std::string manage = kDefaultManage;
  bool json = false;
  app.add_option("--manage", manage, "address of the management service (unix:PATH or host:port)")
      ->capture_default_str();
  app.add_flag("--json", json, "management commands: print the answer as JSON");
  std::string tls_ca, tls_cert, tls_key, token_file;
  app.add_option("--tls-ca", tls_ca, "connect with TLS, trusting the CA certificate(s) in this PEM file");
  app.add_option("--tls-cert", tls_cert, "client certificate (PEM) for mutual TLS; needs --tls-key");
  app.add_option("--tls-key", tls_key, "private key (PEM) of --tls-cert");
  app.add_flag("--tls", "connect with TLS, trusting the system's CAs (implied by --tls-ca and --tls-cert)");
  app.add_option("--token-file", token_file,
                 "file holding the bearer token to send (default: the SPLITLEARND_TOKEN environment variable)");

  auto* health = app.add_subcommand("health", "HealthCheck: status, version, uptime");
  auto* info = app.add_subcommand("info", "GetServiceInfo: models, devices, counters");

  auto* infer = app.add_subcommand("infer", "run one random input through a model");
  std::string model, shape_text = "1x10x768", dtype_name = "float32", out_dtype_name;
  int repeat = 1, int8_block = 0;
  uint64_t seed = 0;
  infer->add_option("-m,--model", model, "model id (empty: the default model)");
  infer->add_option("--shape", shape_text, "input shape, e.g. 1x10x768")->capture_default_str();
  infer->add_option("--dtype", dtype_name, "input dtype")->capture_default_str();
  infer->add_option("--output-dtype", out_dtype_name, "answer dtype (default: the input's)");
  infer->add_option("--int8-block", int8_block,
                    "send the input and get the answer int8 blockwise, in blocks of this many values (0: plain)")
      ->check(CLI::NonNegativeNumber);
  infer->add_option("--repeat", repeat, "send the request this many times")->capture_default_str();
  infer->add_option("--seed", seed, "seed of the random input")->capture_default_str();

  // Every argument after it (--help included) goes to splitlearnd make-demo-shard.
  auto* shard = app.add_subcommand("make-demo-shard",
                                   "write a TorchScript shard with random weights (runs splitlearnd make-demo-shard)");
  shard->prefix_command();
  shard->set_help_flag();

  auto* status_cmd = app.add_subcommand("status", "daemon status: config, last reload, models, traffic, devices");
  auto* top_cmd = app.add_subcommand("top", "status, refreshed every second, with request rates");
  int top_iterations = 0;
  top_cmd->add_option("-n,--iterations", top_iterations, "stop after this many refreshes (0: until Ctrl-C)");
  auto* models_cmd = app.add_subcommand("models", "list the models (or show one)");
  std::string model_id;
  models_cmd->add_option("id", model_id, "show this model in detail");
  auto* load_cmd = app.add_subcommand("load", "load a model of the config by id, or a file under model_root by --path");
  std::string load_path, load_device;
  bool no_wait = false;
  // One option with both names: CLI11 2.4 refuses a positional and a long option that share "id".
  load_cmd->add_option("id,--id", model_id, "model id (with --path: the id to give it; default: the file name)");
  load_cmd->add_option("--path", load_path, "a model file inside model_root (relative to it, or absolute)");
  load_cmd->add_option("--device", load_device, "with --path: cpu or cuda:N (default cpu)");
  load_cmd->add_flag("--no-wait", no_wait, "return at once instead of when the load finished");
  auto* unload_cmd = app.add_subcommand("unload", "unload a model (in-flight requests finish)");
  unload_cmd->add_option("id", model_id, "model id")->required();
  auto* reload_cmd = app.add_subcommand("reload", "load a model again from its file, beside the running version");
  reload_cmd->add_option("id", model_id, "model id")->required();
  reload_cmd->add_flag("--no-wait", no_wait, "return at once instead of when the load finished");
  auto* reload_config_cmd = app.add_subcommand("reload-config", "re-read the config file and apply it (like SIGHUP)");
  auto* log_level_cmd = app.add_subcommand("log-level", "set the daemon's log level until the next restart");
  std::string level;
  log_level_cmd->add_option("level", level, "trace, debug, info, warn, error, critical or off")->required();

  CLI11_PARSE(app, argc, argv);
  if (*shard) return ForwardMakeDemoShard(shard->remaining());

  // TLS applies to TCP addresses; Unix sockets stay plaintext. The token goes with
  // every call, compute and management alike.
  ClientOptions security;
  if (!tls_ca.empty() || !tls_cert.empty() || !tls_key.empty() || app.get_option("--tls")->count()) {
    if (auto s = LoadTlsFiles(tls_ca, tls_cert, tls_key, &security); !s.ok()) return Fail(s);
  }
  {
    auto token = ReadToken(token_file);
    if (!token.ok()) return Fail(token.status());
    security.token = std::move(*token);
  }
  auto manage_channel = [&] {
    ClientOptions o = security;
    if (manage.rfind("unix:", 0) == 0) o.tls = false;
    return grpc::CreateChannel(manage, ChannelCredentialsFor(o));
  };

  if (*top_cmd) {
    auto stub = mgmt::ManagementService::NewStub(manage_channel());
    mgmt::StatusResponse previous;
    auto previous_at = std::chrono::steady_clock::now();
    for (int i = 0; top_iterations == 0 || i < top_iterations; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      AddToken(&ctx, security.token);
      mgmt::StatusResponse r;
      grpc::Status s = stub->GetStatus(&ctx, mgmt::GetStatusRequest{}, &r);
      if (!s.ok()) return FailGrpc(s, manage);
      const auto now = std::chrono::steady_clock::now();
      if (isatty(STDOUT_FILENO)) std::printf("\033[H\033[2J");
      PrintStatus(r);
      if (i > 0) {
        std::printf("\nlast second:\n");
        PrintTraffic(r.models(), &previous.models(), std::chrono::duration<double>(now - previous_at).count());
      }
      std::fflush(stdout);
      previous = std::move(r);
      previous_at = now;
      if (top_iterations == 0 || i + 1 < top_iterations) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    return 0;
  }

  if (*status_cmd || *models_cmd || *load_cmd || *unload_cmd || *reload_cmd || *reload_config_cmd || *log_level_cmd) {
    auto stub = mgmt::ManagementService::NewStub(manage_channel());
    const bool long_call = *load_cmd || *reload_cmd || *reload_config_cmd;
    const int ms = app.get_option("--timeout-ms")->count() ? timeout_ms : long_call ? 600000 : 10000;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    AddToken(&ctx, security.token);
    grpc::Status s;
    if (*status_cmd) {
      mgmt::StatusResponse r;
      s = stub->GetStatus(&ctx, mgmt::GetStatusRequest{}, &r);
      if (!s.ok()) return FailGrpc(s, manage);
      if (json) std::printf("%s", Json(r).c_str());
      else PrintStatus(r);
      return r.last_reload().ok() ? 0 : 3;
    }
    if (*models_cmd && model_id.empty()) {
      mgmt::ListModelsResponse r;
      s = stub->ListModels(&ctx, mgmt::ListModelsRequest{}, &r);
      if (!s.ok()) return FailGrpc(s, manage);
      if (json) std::printf("%s", Json(r).c_str());
      else PrintModels(r.models(), r.draining());
      return 0;
    }
    if (*reload_config_cmd) {
      mgmt::ReloadResult r;
      s = stub->ReloadConfig(&ctx, mgmt::ReloadConfigRequest{}, &r);
      if (!s.ok()) return FailGrpc(s, manage);
      if (json) std::printf("%s", Json(r).c_str());
      else PrintReload(r);
      return r.ok() ? 0 : 1;
    }
    if (*log_level_cmd) {
      mgmt::SetLogLevelRequest req;
      req.set_level(level);
      mgmt::SetLogLevelResponse r;
      s = stub->SetLogLevel(&ctx, req, &r);
      if (!s.ok()) return FailGrpc(s, manage);
      if (json) std::printf("%s", Json(r).c_str());
      else std::printf("log level %s (was %s)\n", r.level().c_str(), r.previous().c_str());
      return 0;
    }
    mgmt::ModelInfo m;
    if (*models_cmd) {
      mgmt::GetModelRequest req;
      req.set_id(model_id);
      s = stub->GetModel(&ctx, req, &m);
    } else if (*load_cmd) {
      if (model_id.empty() && load_path.empty()) return Fail(InvalidArgument("load needs a model id or --path"));
      mgmt::LoadModelRequest req;
      req.set_id(model_id);
      req.set_path(load_path);
      req.set_device(load_device);
      req.set_no_wait(no_wait);
      s = stub->LoadModel(&ctx, req, &m);
    } else if (*unload_cmd) {
      mgmt::UnloadModelRequest req;
      req.set_id(model_id);
      s = stub->UnloadModel(&ctx, req, &m);
    } else {
      mgmt::ReloadModelRequest req;
      req.set_id(model_id);
      req.set_no_wait(no_wait);
      s = stub->ReloadModel(&ctx, req, &m);
    }
    if (!s.ok()) return FailGrpc(s, manage);
    if (json) std::printf("%s", Json(m).c_str());
    else PrintModel(m);
    return 0;
  }

  ClientOptions options = security;
  options.timeout = std::chrono::milliseconds(timeout_ms);
  Client client(target, options);
  if (*health) {
    auto h = client.Health();
    if (!h.ok()) return Fail(h.status());
    std::printf("status:  %s\nmessage: %s\nversion: %s\nuptime:  %.1f s\n", h->status().c_str(), h->message().c_str(),
                h->version().c_str(), h->uptime_seconds());
    return h->status() == "ok" ? 0 : 3;  // "ok" while serving (docs/protocol.md)
  }
  if (*info) {
    auto i = client.Info();
    if (!i.ok()) return Fail(i.status());
    std::printf("service:  %s %s\ndevices:  %s\nuptime:   %.1f s\nrequests: %lld\n", i->service_name().c_str(),
                i->version().c_str(), i->device().c_str(), i->uptime_seconds(),
                static_cast<long long>(i->total_requests()));
    std::map<std::string, std::string> sorted(i->custom_info().begin(), i->custom_info().end());
    for (const auto& [k, v] : sorted) std::printf("  %-40s %s\n", k.c_str(), v.c_str());
    return 0;
  }
  if (*infer) {
    const auto dtype = DTypeFromName(dtype_name);
    if (!dtype) return Fail(InvalidArgument("unknown dtype " + dtype_name));
    std::optional<DType> out_dtype;
    if (!out_dtype_name.empty()) {
      out_dtype = DTypeFromName(out_dtype_name);
      if (!out_dtype) return Fail(InvalidArgument("unknown dtype " + out_dtype_name));
    }
    auto shape = ParseShape(shape_text);
    if (!shape.ok()) return Fail(shape.status());
    Tensor x;
    x.dtype = *dtype;
    x.shape = std::move(*shape);
    int64_t n = 1;
    for (auto d : x.shape) n *= d;
    if (*dtype != DType::kFloat32) return Fail(InvalidArgument("infer generates float32 inputs only; use --output-dtype"));
    std::vector<float> values(static_cast<size_t>(n));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    for (auto& v : values) v = normal(rng);
    x.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    for (int i = 0; i < repeat; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      ComputeOptions options;
      options.output_dtype = out_dtype;
      options.int8_block = int8_block;
      auto r = client.Compute(model, x, options);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (!r.ok()) return Fail(r.status());
      std::string shape;
      for (auto d : r->tensor.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
      std::printf("output %s %s checksum %.6f  round trip %.3f ms (compute %.3f ms, queue %.3f ms)\n", shape.c_str(),
                  DTypeName(r->tensor.dtype), Checksum(r->tensor), ms, r->compute_time_ms, r->queue_time_ms);
    }
    return 0;
  }
  return 0;
}
