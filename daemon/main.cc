// splitlearnd: serves TorchScript trunk shards to split-learning clients over gRPC.
//
// Threads (docs/threading.md): this main thread blocks every signal before any other
// thread starts and then waits for them with sigtimedwait(); it also sends systemd's
// watchdog pings and runs reloads. gRPC's threads only validate and enqueue; one
// worker per device runs models; the manager's loader thread loads and warms them.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "config/config.h"
#include "daemon/logging.h"
#include "daemon/notifier.h"
#include "daemon/server.h"
#include "manager/model_manager.h"
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
  bool version = false;
};

std::string Summary(const ModelManager& manager) {
  int ready = 0, failed = 0, loading = 0;
  for (const auto& m : manager.ListModels()) {
    if (m.state == ModelState::kReady) ++ready;
    else if (m.state == ModelState::kFailed) ++failed;
    else if (m.state == ModelState::kLoading) ++loading;
  }
  std::string s = std::to_string(ready) + " model(s) ready";
  if (loading) s += ", " + std::to_string(loading) + " loading";
  if (failed) s += ", " + std::to_string(failed) + " failed";
  return s;
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

  const DeviceConfig& cpu = config.Device("cpu");
  ConfigureTorchThreads(ThreadSettings{cpu.intra_op_threads, cpu.inter_op_threads, cpu.blas_threads});
  const ThreadSettings threads = EffectiveTorchThreads();
  spdlog::info("splitlearnd {} starting: {}; threads intra-op {}, inter-op {}, BLAS {}", SPLITLEARND_VERSION,
               TorchBuildSummary(), threads.intra_op_threads, threads.inter_op_threads, threads.blas_threads);

  Server* server_ptr = nullptr;
  std::mutex server_mu;
  ModelManager::Hooks hooks;
  hooks.on_state_change = [&](const ModelStatus& m) {
    spdlog::info("model '{}' {}{}{}", m.id, ModelStateName(m.state),
                 m.state == ModelState::kReady ? " (version " + std::to_string(m.version) + ", " + m.device + ")" : "",
                 m.last_error.empty() ? "" : ": " + m.last_error);
    std::lock_guard<std::mutex> lock(server_mu);
    if (server_ptr) server_ptr->OnModelState(m);
  };
  ModelManager manager(MakeTorchScriptLoader(), hooks);

  ServerOptions server_options;
  server_options.listen = config.server.listen;
  server_options.max_message_bytes = config.server.max_message_bytes;
  server_options.limits.max_elements = config.server.max_tensor_elements;
  server_options.version = SPLITLEARND_VERSION;
  Server server(&manager, server_options);
  server.compute().set_extra_info({{"torch", TorchBuildSummary()},
                                   {"threads.intra_op", std::to_string(threads.intra_op_threads)},
                                   {"threads.blas", std::to_string(threads.blas_threads)}});
  {
    std::lock_guard<std::mutex> lock(server_mu);
    server_ptr = &server;
  }
  manager.Apply(config);
  if (auto s = server.Start(); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  spdlog::info("compute service listening on {}", server.bound_address());

  manager.WaitIdle(std::chrono::hours(24));
  LogModelStates(manager);
  server.SetReady(manager.AllReady());
  notifier.Ready(Summary(manager) + "; listening on " + server.bound_address());
  spdlog::info("ready: {}", Summary(manager));

  const auto ping = notifier.watchdog_interval();
  const auto tick = ping.count() > 0 ? std::min<std::chrono::microseconds>(ping, std::chrono::seconds(1))
                                     : std::chrono::microseconds(std::chrono::seconds(1));
  while (true) {
    timespec timeout{static_cast<time_t>(tick.count() / 1000000), static_cast<long>((tick.count() % 1000000) * 1000)};
    const int sig = sigtimedwait(&signals, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("{}: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    if (sig == SIGHUP) {
      notifier.Reloading("reloading " + opt.config);
      spdlog::info("SIGHUP: reloading {}", opt.config);
      auto next = LoadConfigFile(opt.config);
      if (!next.ok()) {
        spdlog::error("reload refused, still serving the previous config: {}", next.status().message());
        notifier.Ready("reload failed: " + next.status().message() + "; " + Summary(manager));
        continue;
      }
      if (next->server.listen != config.server.listen && opt.listen.empty()) {
        spdlog::warn("server.listen changed; it takes effect at the next restart");
      }
      config.models = next->models;
      config.devices = next->devices;
      manager.Apply(config);
      manager.WaitIdle(std::chrono::hours(1));
      LogModelStates(manager);
      server.SetReady(manager.AllReady());
      notifier.Ready("reloaded; " + Summary(manager));
      continue;
    }
    if (ping.count() > 0 && manager.AllWorkersAlive()) notifier.Watchdog();
  }

  notifier.Stopping("draining");
  server.BeginDrain();
  const auto drain = std::chrono::milliseconds(static_cast<int64_t>(config.server.drain_timeout_s * 1000));
  if (!server.WaitDrained(drain)) {
    spdlog::warn("drain timeout ({} s) passed with {} call(s) in flight; they are cancelled",
                 config.server.drain_timeout_s, server.compute().gate().inflight());
  }
  server.Shutdown();
  manager.Shutdown();
  spdlog::info("stopped");
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
  app.add_flag("-V,--version", opt.version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

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
    std::printf("%s: OK (%zu model(s))\n", opt.check_config.c_str(), c->models.size());
    return 0;
  }
  return Run(opt);
}
