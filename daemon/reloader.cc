#include "daemon/reloader.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace splitlearnd {

struct ConfigReloader::Pending {
  std::string triggers;
  std::promise<ReloadReport> promise;
  std::shared_future<ReloadReport> future;
};

namespace {

std::string Join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

}  // namespace

ConfigReloader::ConfigReloader(Options options, Config initial, FileFingerprint initial_fingerprint,
                               ModelManager* manager, SystemdNotifier* notifier, AppliedHook on_applied)
    : options_(std::move(options)),
      manager_(manager),
      notifier_(notifier),
      on_applied_(std::move(on_applied)),
      current_(std::move(initial)),
      applied_at_(std::chrono::system_clock::now()),
      read_fingerprint_(initial_fingerprint) {
  last_.trigger = "startup";
  last_.config_file = options_.config_path;
  last_.time = applied_at_;
  last_.message = "started with " + std::to_string(current_.models.size()) + " configured model(s)";
}

ConfigReloader::~ConfigReloader() { Stop(); }

void ConfigReloader::Stop() { thread_.Stop(); }

void ConfigReloader::SetNotifying(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  notifying_ = on;
}

ReloadReport ConfigReloader::last() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

Config ConfigReloader::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

std::chrono::system_clock::time_point ConfigReloader::applied_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return applied_at_;
}

FileFingerprint ConfigReloader::read_fingerprint() const {
  std::lock_guard<std::mutex> lock(mu_);
  return read_fingerprint_;
}

std::string ConfigReloader::Summary(const ModelManager& manager) {
  int ready = 0, loading = 0, unloaded = 0;
  std::vector<std::string> failed;
  for (const auto& m : manager.ListModels()) {
    switch (m.state) {
      case ModelState::kReady: ++ready; break;
      case ModelState::kFailed: failed.push_back(m.id); break;
      case ModelState::kLoading: ++loading; break;
      case ModelState::kUnloaded: ++unloaded; break;
      case ModelState::kUnloading: break;
    }
  }
  std::string s = std::to_string(ready) + " model(s) ready";
  if (loading) s += ", " + std::to_string(loading) + " loading";
  // Named, so that `systemctl status` says which model to look at.
  if (!failed.empty()) s += ", " + std::to_string(failed.size()) + " failed (" + Join(failed, ", ") + ")";
  if (unloaded) s += ", " + std::to_string(unloaded) + " unloaded";
  return s;
}

std::shared_future<ReloadReport> ConfigReloader::Request(const std::string& trigger) {
  std::shared_ptr<Pending> p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_) {
      pending_->triggers += ", " + trigger;
      return pending_->future;
    }
    p = std::make_shared<Pending>();
    p->triggers = trigger;
    p->future = p->promise.get_future().share();
    pending_ = p;
  }
  thread_.Post([this, p] {
    std::string triggers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_ == p) pending_.reset();
      triggers = p->triggers;
    }
    p->promise.set_value(Run(triggers));
  });
  return p->future;
}

std::vector<std::string> ConfigReloader::RestartOnlyChanges(const Config& a, const Config& b) const {
  std::vector<std::string> w;
  auto note = [&](const std::string& key) { w.push_back(key + " changed; it takes effect at the next restart"); };
  if (options_.listen_override.empty() && a.server.listen != b.server.listen) note("server.listen");
  if (a.server.management_listen != b.server.management_listen) note("server.management_listen");
  if (a.server.metrics_listen != b.server.metrics_listen) note("server.metrics_listen");
  if (a.server.max_message_bytes != b.server.max_message_bytes) note("server.max_message_bytes");
  if (a.server.max_tensor_elements != b.server.max_tensor_elements) note("server.max_tensor_elements");
  if (a.server.cpus != b.server.cpus) {
    w.push_back("server.cpus changed: device workers without their own cpus move now, the daemon's other threads at "
                "the next restart");
  }
  if (a.server.tls.has_value() != b.server.tls.has_value()) {
    w.push_back(std::string("server.tls ") + (b.server.tls ? "added" : "removed") +
                "; TLS is turned on or off at the next restart (until then the listeners stay as they are" +
                (a.server.tls ? " and the previous certificate keeps serving)" : ")"));
  } else if (a.server.tls && b.server.tls) {
    if (a.server.tls->client_ca_file.empty() != b.server.tls->client_ca_file.empty()) {
      w.push_back(std::string("server.tls.client_ca_file ") + (b.server.tls->client_ca_file.empty() ? "removed" : "added") +
                  "; mutual TLS is turned on or off at the next restart");
    } else if (a.server.tls->require_client_cert != b.server.tls->require_client_cert) {
      note("server.tls.require_client_cert");
    }
  }
  for (const auto& [name, d] : b.devices) {
    auto it = a.devices.find(name);
    if (it == a.devices.end()) continue;
    const DeviceConfig& o = it->second;
    if (o.queue_capacity != d.queue_capacity) note("devices." + name + ".queue_capacity");
    if (name == "cpu" && o.cpus != d.cpus) {
      w.push_back("devices.cpu.cpus changed: the device worker moves now, OpenBLAS's helper threads at the next restart");
    }
    if (o.intra_op_threads != d.intra_op_threads || o.inter_op_threads != d.inter_op_threads ||
        o.blas_threads != d.blas_threads) {
      note("devices." + name + " thread counts");
    }
  }
  return w;
}

ReloadReport ConfigReloader::Run(const std::string& trigger) {
  const auto t0 = std::chrono::steady_clock::now();
  bool notify;
  Config previous;
  {
    std::lock_guard<std::mutex> lock(mu_);
    notify = notifying_;
    previous = current_;
  }
  ReloadReport r;
  r.trigger = trigger;
  r.config_file = options_.config_path;
  r.time = std::chrono::system_clock::now();
  spdlog::info("reloading {} ({})", options_.config_path, trigger);
  if (notify) notifier_->Reloading("reloading " + options_.config_path + " (" + trigger + ")");

  {
    std::lock_guard<std::mutex> lock(mu_);
    read_fingerprint_ = FingerprintFile(options_.config_path);  // before reading: a later save is seen
  }
  auto next = LoadConfigFile(options_.config_path);
  std::vector<std::string> prepare_warnings;
  bool refused_files = false;  // the file is valid; a file it names is not
  if (next.ok() && options_.before_apply) {
    Config candidate = next.value();
    if (!options_.listen_override.empty()) candidate.server.listen = options_.listen_override;
    if (auto s = options_.before_apply(previous, candidate, &prepare_warnings); !s.ok()) {
      next = s;
      refused_files = true;
    }
  }
  if (!next.ok()) {
    r.ok = false;
    r.config_valid = false;
    r.message = (refused_files ? "reload refused, nothing changed: " : "invalid config, nothing changed: ") +
                next.status().message();
    spdlog::error("reload refused, still serving the previous config: {}", next.status().message());
    if (notify) notifier_->Ready("reload failed: " + next.status().message() + "; " + Summary(*manager_));
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (on_applied_) on_applied_(previous, previous, r);
  } else {
    Config config = std::move(next.value());
    if (!options_.listen_override.empty()) config.server.listen = options_.listen_override;
    r.warnings = RestartOnlyChanges(previous, config);
    for (const auto& w : r.warnings) spdlog::warn("{}", w);
    r.warnings.insert(r.warnings.end(), prepare_warnings.begin(), prepare_warnings.end());

    const ApplyResult applied = manager_->Apply(config);
    r.added = applied.added;
    r.removed = applied.removed;
    r.updated = applied.updated;
    r.changed = applied.changed;
    std::vector<std::string> started = applied.added;
    for (const auto* list : {&applied.changed, &applied.file_changed, &applied.retried}) {
      started.insert(started.end(), list->begin(), list->end());
    }
    if (!manager_->WaitIdle(options_.load_wait)) {
      r.warnings.push_back("loads still running after " + std::to_string(options_.load_wait.count() / 1000) + " s");
    }
    for (const std::string& id : started) {
      const auto s = manager_->GetModel(id);
      if (!s) continue;
      if (!s->last_error.empty()) {
        r.failed.push_back(id + ": " + s->last_error);
      } else if (std::find(applied.file_changed.begin(), applied.file_changed.end(), id) !=
                     applied.file_changed.end() &&
                 s->loaded_at >= r.time) {
        r.changed.push_back(id);  // its file had new bytes: a new version serves
      }
    }
    r.ok = r.failed.empty();
    std::string what;
    auto part = [&](const std::vector<std::string>& v, const char* name) {
      if (!v.empty()) what += (what.empty() ? "" : "; ") + std::string(name) + " " + Join(v);
    };
    part(r.added, "added");
    part(r.changed, "changed");
    part(r.removed, "removed");
    part(r.updated, "updated in place");
    if (what.empty()) what = "no model changed";
    r.message = (r.ok ? "applied: " : "applied with failures: ") + what;
    if (!r.ok) r.message += "; failed: " + Join(r.failed, "; ");
    if (r.ok) {
      spdlog::info("reload done: {}", r.message);
    } else {
      spdlog::error("reload done: {}", r.message);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = config;
      applied_at_ = r.time;
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (on_applied_) on_applied_(previous, config, r);
    if (notify) {
      notifier_->Ready((r.ok ? "reloaded: " : "reload had failures: ") + Summary(*manager_) +
                       (r.ok ? "" : "; " + Join(r.failed, "; ")));
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  last_ = r;
  return r;
}

}  // namespace splitlearnd
