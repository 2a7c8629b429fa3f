// splitlearnd: serves TorchScript trunk shards to split-learning clients over gRPC.
//
// Threads (docs/threading.md): this main thread blocks every signal before any other
// thread starts and then waits for them with sigtimedwait(); it also sends systemd's
// watchdog pings. Reloads (SIGHUP, a saved config file, ReloadConfig) run on the
// reloader's thread; the config watcher has a thread of its own. gRPC's threads only
// validate and enqueue; one worker per device runs models; the manager's loader
// thread loads and warms them.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>

#include "common/cpus.h"
#include "common/digest.h"
#include "common/files.h"
#include "config/config.h"
#include "daemon/auth.h"
#include "daemon/config_watcher.h"
#include "daemon/logging.h"
#include "daemon/management_server.h"
#include "daemon/metrics.h"
#include "daemon/notifier.h"
#include "daemon/reloader.h"
#include "daemon/server.h"
#include "daemon/tls.h"
#include "manager/model_manager.h"
#include "manager/torchscript/demo_shard.h"
#include "manager/torchscript/torchscript.h"

#ifndef SPLITLEARND_VERSION
#define SPLITLEARND_VERSION "0.0.0"
#endif

namespace splitlearnd {
namespace {

constexpr const char* kDefaultConfig = "/etc/splitlearnd/config.yaml";

struct Options {
  std::string config = kDefaultConfig;
  std::string check_config;
  std::string listen;
  std::string log_level;
  std::string log_format = "auto";
  std::string ready_file;
  bool version = false;
};

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;  // addresses and paths have none
    out += c;
  }
  return out + "\"";
}

// The --ready-file: one JSON object, written once the first READY=1 is sent, so that a
// launcher (tests, scripts) learns the bound addresses without reading the log.
Status WriteReadyFile(const std::string& path, const std::string& listen, const std::string& management,
                      const std::string& metrics, size_t serving) {
  std::string json = "{\"pid\": " + std::to_string(getpid()) + ", \"listen\": " + JsonString(listen) +
                     ", \"management\": " + JsonString(management) + ", \"metrics\": " + JsonString(metrics) +
                     ", \"serving\": " + std::to_string(serving) + "}\n";
  return WriteFileAtomically(path, json);
}

void LogModelStates(const ModelManager& manager) {
  for (const auto& m : manager.ListModels()) {
    if (m.state == ModelState::kFailed) {
      spdlog::error("model '{}' FAILED: {}", m.id, m.last_error);
    } else if (!m.last_error.empty()) {
      spdlog::error("model '{}' keeps version {}; its new version failed: {}", m.id, m.version, m.last_error);
    }
  }
}

bool IsUnixAddress(const std::string& address) { return address.rfind("unix:", 0) == 0; }

// Start: reads the token file and the TLS files and puts them in force; warns about
// settings that leave something open.
Status SetUpSecurity(const Config& config, Authenticator* auth, std::unique_ptr<TlsServer>* tls) {
  std::vector<std::string> warnings;
  auto policy = Authenticator::Prepare(config.server.auth, &warnings);
  for (const auto& w : warnings) spdlog::warn("{}", w);
  if (!policy.ok()) return policy.status();
  auth->Install(*policy);
  warnings.clear();
  if (config.server.tls) {
    auto started = TlsServer::Start(*config.server.tls, &warnings);
    for (const auto& w : warnings) spdlog::warn("{}", w);
    if (!started.ok()) return started.status();
    *tls = std::move(started.value());
    const auto& t = *config.server.tls;
    spdlog::info("TLS on the TCP listeners ({}), served from {}", t.client_ca_file.empty() ? "no client certificates"
                 : t.require_client_cert ? "client certificates required" : "client certificates verified when sent",
                 (*tls)->folder());
  }
  const auto& a = config.server.auth;
  const bool tcp_management = !config.server.management_listen.empty() && !IsUnixAddress(config.server.management_listen);
  if (tcp_management && a.management == AuthMode::kToken && a.token_file.empty()) {
    spdlog::warn("management listens on TCP ({}) but no server.auth.token_file is set: every management call over "
                 "it will be refused (UNAUTHENTICATED)", config.server.management_listen);
  }
  if (tcp_management && a.management == AuthMode::kNone) {
    spdlog::warn("server.auth.management is none: anyone who reaches {} can steer the daemon",
                 config.server.management_listen);
  }
  if (!config.server.tls && !a.token_file.empty() && (a.compute == AuthMode::kToken || tcp_management)) {
    spdlog::warn("tokens are sent in clear text over TCP without server.tls");
  }
  return Status::Ok();
}

// Every `cpus` list of the config must name CPUs this process may run on.
Status CheckConfigCpus(const Config& config) {
  if (auto s = CheckCpusAllowed(config.server.cpus, "server.cpus"); !s.ok()) return s;
  for (const auto& [name, d] : config.devices) {
    if (auto s = CheckCpusAllowed(d.cpus, "devices." + name + ".cpus"); !s.ok()) return s;
  }
  return Status::Ok();
}

// Reload: checks the new token file and TLS files first, then puts both in force; an
// error changes nothing (the previous tokens and certificate stay).
Status ReloadSecurity(const Config& previous, const Config& next, Authenticator* auth, TlsServer* tls,
                      std::vector<std::string>* warnings) {
  std::vector<std::string> notes;
  auto policy = Authenticator::Prepare(next.server.auth, &notes);
  std::optional<TlsMaterial> material;
  Status checked = policy.status();
  if (checked.ok() && tls && next.server.tls) {
    auto m = tls->Prepare(*next.server.tls, &notes);
    checked = m.status();
    if (m.ok()) material = std::move(m.value());
  }
  for (const auto& n : notes) spdlog::warn("{}", n);
  if (!checked.ok()) return checked;
  warnings->insert(warnings->end(), notes.begin(), notes.end());
  if (material) {
    auto changed = tls->Install(*material);
    if (!changed.ok()) return changed.status();
    if (*changed) spdlog::info("TLS: now serving {}", material->summary);
  }
  auth->Install(*policy);
  if (previous.server.auth.compute != next.server.auth.compute) {
    warnings->push_back("server.auth.compute changed: calls are checked accordingly from now on; gRPC reflection on "
                        "the compute listener is turned on or off at the next restart");
    spdlog::warn("{}", warnings->back());
  }
  return Status::Ok();
}

int Run(const Options& opt) {
  // Block the signals we handle before any thread exists, so that every thread
  // inherits the mask and they all arrive at sigtimedwait() below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const auto started = std::chrono::steady_clock::now();

  const FileFingerprint config_fingerprint = FingerprintFile(opt.config);
  auto loaded = LoadConfigFile(opt.config);
  LogFormat format = opt.log_format == "json" ? LogFormat::kJson
                     : opt.log_format == "text" ? LogFormat::kText
                     : opt.log_format == "journal" ? LogFormat::kJournal
                                                   : LogFormat::kAuto;
  const std::string level = !opt.log_level.empty() ? opt.log_level : loaded.ok() ? loaded->server.log_level : "info";
  if (auto s = SetupLogging(level, format); !s.ok()) {
    std::cerr << "splitlearnd: " << s.message() << "\n";
    return 2;
  }
  SystemdNotifier notifier;
  if (!loaded.ok()) {
    spdlog::critical("{}", loaded.status().message());
    notifier.Status("invalid config: " + loaded.status().message());
    return 1;
  }
  Config config = std::move(loaded.value());
  if (!opt.listen.empty()) config.server.listen = opt.listen;

  // Tokens and TLS before anything listens: a bad file refuses to start.
  Authenticator authenticator;
  std::unique_ptr<TlsServer> tls;
  if (auto s = SetUpSecurity(config, &authenticator, &tls); !s.ok()) {
    spdlog::critical("{}", s.message());
    notifier.Status("cannot start: " + s.message());
    return 1;
  }

  // CPU placement before any other thread starts: threads inherit the main thread's
  // CPUs (server.cpus); each device worker then moves to its own.
  AllowedCpus();  // remembers the process's own set first
  if (auto s = CheckConfigCpus(config); !s.ok()) {
    spdlog::critical("{}", s.message());
    notifier.Status("cannot start: " + s.message());
    return 1;
  }
  if (!config.server.cpus.empty()) {
    if (auto s = PinCurrentThread(config.server.cpus); !s.ok()) {
      spdlog::critical("server.cpus: {}", s.message());
      return 1;
    }
  }
  const DeviceConfig& cpu = config.Device("cpu");
  ThreadSettings wanted_threads;
  wanted_threads.intra_op_threads = cpu.intra_op_threads;
  wanted_threads.inter_op_threads = cpu.inter_op_threads;
  wanted_threads.blas_threads = cpu.blas_threads;
  wanted_threads.blas_cpus = cpu.cpus.empty() ? config.server.cpus : cpu.cpus;
  ConfigureTorchThreads(wanted_threads);
  const ThreadSettings threads = EffectiveTorchThreads();
  spdlog::info("splitlearnd {} starting: {}; threads intra-op {}, inter-op {}, BLAS {}", SPLITLEARND_VERSION,
               TorchBuildSummary(), threads.intra_op_threads, threads.inter_op_threads, threads.blas_threads);

  Server* server_ptr = nullptr;
  std::mutex server_mu;
  // Before the manager: its hooks feed the metrics until it is gone.
  // Always kept (status shows its figures); served over HTTP only with metrics_listen.
  auto metrics = std::make_unique<Metrics>();
  ModelManager::Hooks hooks;
  if (metrics) hooks.on_batch = [m = metrics.get()](const std::string& device, int n) { m->OnBatch(device, n); };
  hooks.on_state_change = [&](const ModelStatus& m) {
    spdlog::info("model '{}' {}{}{}", m.id, ModelStateName(m.state),
                 m.state == ModelState::kReady ? " (version " + std::to_string(m.version) + ", " + m.device + ")" : "",
                 m.last_error.empty() ? "" : ": " + m.last_error);
    if (metrics) metrics->OnModelState(m);
    std::lock_guard<std::mutex> lock(server_mu);
    if (server_ptr) server_ptr->OnModelState(m);
  };
  hooks.on_version_released = [](const std::string& id, uint64_t version) {
    spdlog::info("model '{}' version {} unloaded: its last request finished and its memory is released", id, version);
  };
  hooks.file_digest = [](const std::string& path) { return FileSha256(path); };
  ModelManager manager(MakeTorchScriptLoader(), hooks);

  ServerOptions server_options;
  server_options.listen = config.server.listen;
  server_options.max_message_bytes = config.server.max_message_bytes;
  server_options.limits.max_elements = config.server.max_tensor_elements;
  server_options.version = SPLITLEARND_VERSION;
  server_options.credentials = tls ? tls->credentials() : nullptr;
  server_options.authenticator = &authenticator;
  Server server(&manager, server_options);
  server.compute().set_extra_info({{"torch", TorchBuildSummary()},
                                   {"threads.intra_op", std::to_string(threads.intra_op_threads)},
                                   {"threads.blas", std::to_string(threads.blas_threads)}});
  if (metrics) server.compute().set_observer(metrics.get());  // before any call can arrive
  {
    std::lock_guard<std::mutex> lock(server_mu);
    server_ptr = &server;
  }
  // However Run() ends, the hooks stop reaching `server` before it is destroyed (the
  // manager, older, may still be finishing loads then).
  struct ServerHookGuard {
    std::mutex& mu;
    Server*& ptr;
    ~ServerHookGuard() {
      std::lock_guard<std::mutex> lock(mu);
      ptr = nullptr;
    }
  } server_hook_guard{server_mu, server_ptr};
  manager.Apply(config);
  if (auto s = server.Start(); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  spdlog::info("compute service listening on {}", server.bound_address());
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;  // after the manager: gone before it
  if (!config.server.metrics_listen.empty()) {
    auto endpoint = MetricsEndpoint::Start(config.server.metrics_listen, metrics.get(), &manager);
    if (!endpoint.ok()) {
      spdlog::critical("{}", endpoint.status().message());
      server.Shutdown();
      return 1;
    }
    metrics_endpoint = std::move(endpoint.value());
    spdlog::info("metrics on http://{}/metrics", metrics_endpoint->bound_address());
  }

  // One reload path for SIGHUP, a saved file and the ReloadConfig call.
  ConfigReloader::Options reload_options;
  reload_options.config_path = opt.config;
  reload_options.listen_override = opt.listen;
  reload_options.before_apply = [&](const Config& previous, const Config& next, std::vector<std::string>* warnings) {
    if (auto s = CheckConfigCpus(next); !s.ok()) return s;
    if (auto s = CheckModelFormats(next); !s.ok()) return s;
    return ReloadSecurity(previous, next, &authenticator, tls.get(), warnings);
  };
  ConfigReloader reloader(
      reload_options, config, config_fingerprint, &manager, &notifier,
      [&](const Config& previous, const Config& next, const ReloadReport& report) {
        if (metrics) metrics->OnReload(report.ok);
        if (opt.log_level.empty() && previous.server.log_level != next.server.log_level) {
          if (SetLogLevel(next.server.log_level).ok()) spdlog::info("log level is now {}", next.server.log_level);
        }
        server.SetReady(manager.ServingCount() > 0);
      });

  std::atomic<bool> watching{false};
  DaemonInfo info;
  info.version = SPLITLEARND_VERSION;
  info.started = started;
  info.listen = [&] { return server.bound_address(); };
  info.draining = [&] { return server.compute().gate().closed(); };
  info.watching_config = [&] { return watching.load(); };
  info.metrics = metrics.get();
  std::unique_ptr<ManagementServer> management;
  if (!config.server.management_listen.empty()) {
    management = std::make_unique<ManagementServer>(&manager, &reloader, info, &authenticator);
    if (auto s = management->Start(config.server.management_listen, tls ? tls->credentials() : nullptr); !s.ok()) {
      spdlog::critical("management service: {}", s.message());
      server.Shutdown();
      return 1;
    }
    spdlog::info("management service listening on {}", management->bound_address());
  }

  std::unique_ptr<ConfigWatcher> watcher;
  auto update_watcher = [&](bool want) {
    if (want && !watcher) {
      watcher = std::make_unique<ConfigWatcher>(opt.config, std::chrono::milliseconds(200),
                                                [&] {
                                                  // Skip a save that a reload already read (SIGHUP came first).
                                                  if (FingerprintFile(opt.config) != reloader.read_fingerprint()) {
                                                    reloader.Request("file change");
                                                  }
                                                });
      if (auto s = watcher->Start(reloader.read_fingerprint()); !s.ok()) {
        spdlog::warn("not watching {}: {}", opt.config, s.message());
        watcher.reset();
      } else {
        spdlog::info("watching {} for changes", opt.config);
      }
    } else if (!want && watcher) {
      watcher->Stop();
      watcher.reset();
      spdlog::info("no longer watching {}", opt.config);
    }
    watching = watcher != nullptr;
  };

  // The main loop: signals, the watchdog, and the first READY=1 once the initial
  // loads have settled. Reloads run on the reloader's thread so pings never stall.
  const auto ping = notifier.watchdog_interval();
  auto next_ping = std::chrono::steady_clock::now();
  bool ready = false;
  while (true) {
    if (!ready && manager.WaitIdle(std::chrono::milliseconds(0))) {
      ready = true;
      LogModelStates(manager);
      server.SetReady(manager.ServingCount() > 0);
      std::string status = ConfigReloader::Summary(manager) + "; listening on " + server.bound_address();
      if (management) status += ", management on " + management->bound_address();
      notifier.Ready(status);
      reloader.SetNotifying(true);
      spdlog::info("ready: {}", status);
      if (!opt.ready_file.empty()) {
        if (auto s = WriteReadyFile(opt.ready_file, server.bound_address(),
                                    management ? management->bound_address() : "",
                                    metrics_endpoint ? metrics_endpoint->bound_address() : "",
                                    manager.ServingCount());
            !s.ok()) {
          spdlog::error("--ready-file: {}", s.message());
        }
      }
      update_watcher(config.server.watch_config);
    }
    auto now = std::chrono::steady_clock::now();
    if (ping.count() > 0 && now >= next_ping) {
      // A dead device worker means requests for its models would never finish: stop
      // pinging and let systemd restart the daemon.
      if (manager.AllWorkersAlive()) {
        notifier.Watchdog();
      } else {
        spdlog::critical("a device worker thread is gone; withholding the watchdog ping");
      }
      next_ping = now + ping;
    }
    auto tick = std::chrono::duration_cast<std::chrono::microseconds>(ready ? std::chrono::milliseconds(1000)
                                                                            : std::chrono::milliseconds(50));
    if (ping.count() > 0) {
      tick = std::min(tick, std::chrono::duration_cast<std::chrono::microseconds>(next_ping - now));
      tick = std::max(tick, std::chrono::microseconds(1000));
    }
    timespec timeout{static_cast<time_t>(tick.count() / 1000000), static_cast<long>((tick.count() % 1000000) * 1000)};
    const int sig = sigtimedwait(&signals, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("{}: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: reloading {}", opt.config);
      reloader.Request("SIGHUP");
    }
    if (ready) update_watcher(reloader.current().server.watch_config);
  }

  notifier.Stopping("draining");
  update_watcher(false);
  // Health turns NOT_SERVING first while calls are still accepted, so that balancers move
  // away before anything is refused (server.drain_grace_s); a second signal ends it early.
  server.StopAdvertising();
  const auto grace_end = std::chrono::steady_clock::now() + std::chrono::microseconds(static_cast<int64_t>(
                                                                reloader.current().server.drain_grace_s * 1e6));
  for (auto left = grace_end - std::chrono::steady_clock::now(); left.count() > 0;
       left = grace_end - std::chrono::steady_clock::now()) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(left).count();
    timespec wait{static_cast<time_t>(us / 1000000), static_cast<long>((us % 1000000) * 1000)};
    const int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig == SIGTERM || sig == SIGINT) break;
  }
  server.BeginDrain();
  const double drain_s = reloader.current().server.drain_timeout_s;
  if (!server.WaitDrained(std::chrono::milliseconds(static_cast<int64_t>(drain_s * 1000)))) {
    spdlog::warn("drain timeout ({} s) passed with {} call(s) in flight; they are cancelled", drain_s,
                 server.compute().gate().inflight());
  }
  if (management) management->Shutdown();
  server.Shutdown();
  manager.Shutdown();
  reloader.Stop();
  if (!opt.ready_file.empty()) ::unlink(opt.ready_file.c_str());
  spdlog::info("stopped");
  return 0;
}

// `splitlearnd make-demo-shard`: the daemon links libtorch anyway, so the shards are
// written here (splitlearnctl's make-demo-shard runs this).
int MakeDemoShard(const std::string& path, const std::string& kind, ShardSpec spec) {
  spec.kind = kind == "tiny" ? ShardSpec::Kind::kTiny
              : kind == "identity" ? ShardSpec::Kind::kIdentity : ShardSpec::Kind::kTransformer;
  if (auto s = WriteShard(path, spec); !s.ok()) {
    std::fprintf(stderr, "splitlearnd make-demo-shard: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s shard to %s\n", kind.c_str(), path.c_str());
  return 0;
}

}  // namespace
}  // namespace splitlearnd

int main(int argc, char** argv) {
  using namespace splitlearnd;
  Options opt;
  CLI::App app{"splitlearnd: a model-serving daemon for split learning"};
  app.add_option("-c,--config", opt.config, "config file")->capture_default_str();
  app.add_option("--check-config", opt.check_config, "validate FILE, print the result and exit (0: valid, 1: not)");
  app.add_option("--listen", opt.listen, "override server.listen (e.g. 127.0.0.1:0 for any free port)");
  app.add_option("--log-level", opt.log_level, "trace, debug, info, warn, error, critical or off");
  app.add_option("--log-format", opt.log_format, "auto, text, journal or json")
      ->check(CLI::IsMember({"auto", "text", "journal", "json"}));
  app.add_option("--ready-file", opt.ready_file,
                 "once ready, write the bound addresses to FILE as JSON (removed on exit)");
  app.add_flag("-V,--version", opt.version, "print the version and exit");
  auto* shard = app.add_subcommand("make-demo-shard", "write a TorchScript shard with random weights and exit");
  std::string shard_path, shard_kind = "transformer";
  ShardSpec spec;
  shard->add_option("path", shard_path, "where to write the .pt file")->required();
  shard->add_option("--kind", shard_kind, "transformer, tiny (Linear+GELU) or identity")
      ->check(CLI::IsMember({"transformer", "tiny", "identity"}))->capture_default_str();
  shard->add_option("--layers", spec.layers, "transformer layers")->capture_default_str();
  shard->add_option("--hidden", spec.hidden, "hidden size")->capture_default_str();
  shard->add_option("--heads", spec.heads, "attention heads")->capture_default_str();
  shard->add_option("--ffn", spec.ffn, "feed-forward size")->capture_default_str();
  shard->add_flag("--causal", spec.causal, "causal self-attention");
  shard->add_option("--seed", spec.seed, "random seed of the weights")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (*shard) return MakeDemoShard(shard_path, shard_kind, spec);
  ConfigureGrpcRuntime();

  if (opt.version) {
    std::printf("splitlearnd %s\n", SPLITLEARND_VERSION);
    return 0;
  }
  if (!opt.check_config.empty()) {
    auto c = LoadConfigFile(opt.check_config);
    if (!c.ok()) {
      std::fprintf(stderr, "%s\n", c.status().message().c_str());
      return 1;
    }
    // The files the config points to must be good too.
    std::vector<std::string> warnings;
    Status files = Authenticator::Prepare(c->server.auth, &warnings).status();
    if (files.ok() && c->server.tls) files = LoadTlsMaterial(*c->server.tls, &warnings).status();
    if (files.ok()) files = CheckConfigCpus(*c);  // against this process's CPUs (run it as the service runs)
    if (files.ok()) files = CheckModelFormats(*c);  // what this build's libtorch can load
    for (const auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (!files.ok()) {
      std::fprintf(stderr, "%s\n", files.message().c_str());
      return 1;
    }
    std::printf("%s: OK (%zu model(s))\n", opt.check_config.c_str(), c->models.size());
    return 0;
  }
  return Run(opt);
}
