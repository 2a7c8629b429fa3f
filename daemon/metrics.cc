#include "daemon/metrics.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

namespace splitlearnd {
namespace {

constexpr int kStatusCodes = 17;  // OK .. UNAUTHENTICATED

int64_t Nanos(SteadyClock::duration d) {
  return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

prometheus::ClientMetric& AddSample(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels) {
  f.metric.emplace_back();
  f.metric.back().label = std::move(labels);
  return f.metric.back();
}

void AddGauge(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels, double value) {
  AddSample(f, std::move(labels)).gauge.value = value;
}

void AddCounter(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels, double value) {
  AddSample(f, std::move(labels)).counter.value = value;
}

void AddHistogram(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels,
                  const AtomicHistogram& h) {
  auto& m = AddSample(f, std::move(labels));
  const HistogramBuckets& b = h.buckets();
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= b.size(); ++i) {
    cumulative += h.bucket_count(i);
    prometheus::ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound = i < b.size() ? b.bound(i) : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back(bucket);
  }
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = static_cast<double>(h.scaled_sum()) * b.unit();
}

}  // namespace

// ---------------------------------------------------------------- histograms

HistogramBuckets::HistogramBuckets(std::vector<double> bounds, double unit) : bounds_(std::move(bounds)), unit_(unit) {
  for (double b : bounds_) scaled_.push_back(static_cast<int64_t>(std::llround(b / unit_)));
}

size_t HistogramBuckets::Find(int64_t scaled) const {
  return static_cast<size_t>(std::lower_bound(scaled_.begin(), scaled_.end(), scaled) - scaled_.begin());
}

const HistogramBuckets& HistogramBuckets::Latency() {
  static const HistogramBuckets b({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1, 2.5, 5, 10, 30},
                                  1e-9);
  return b;
}

const HistogramBuckets& HistogramBuckets::BatchSize() {
  // Every size up to 8 has a bucket of its own, so small batches are told apart.
  static const HistogramBuckets b({1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024}, 1);
  return b;
}

const HistogramBuckets& HistogramBuckets::LoadTime() {
  static const HistogramBuckets b({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}, 1e-9);
  return b;
}

AtomicHistogram::AtomicHistogram(const HistogramBuckets& buckets)
    : buckets_(buckets), counts_(new std::atomic<uint64_t>[buckets.size() + 1]) {
  for (size_t i = 0; i <= buckets.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void AtomicHistogram::Observe(int64_t scaled) {
  counts_[buckets_.Find(scaled)].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(scaled, std::memory_order_relaxed);
}

HistogramSnapshot AtomicHistogram::Snapshot() const {
  HistogramSnapshot s;
  for (size_t i = 0; i < buckets_.size(); ++i) s.bounds.push_back(buckets_.bound(i));
  for (size_t i = 0; i <= buckets_.size(); ++i) s.counts.push_back(bucket_count(i));
  s.sum = static_cast<double>(scaled_sum()) * buckets_.unit();
  return s;
}

uint64_t HistogramSnapshot::count() const {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

double HistogramSnapshot::Quantile(double q) const {
  const uint64_t total = count();
  if (total == 0 || counts.size() != bounds.size() + 1) return std::numeric_limits<double>::quiet_NaN();
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(total);
  double below = 0;  // samples in the buckets before i
  for (size_t i = 0; i < counts.size(); ++i) {
    const double here = static_cast<double>(counts[i]);
    if (here > 0 && below + here >= rank) {
      if (i == bounds.size()) return bounds.empty() ? std::numeric_limits<double>::quiet_NaN() : bounds.back();
      const double lower = i == 0 ? std::min(0.0, bounds[0]) : bounds[i - 1];
      return lower + (bounds[i] - lower) * (rank - below) / here;
    }
    below += here;
  }
  return bounds.empty() ? std::numeric_limits<double>::quiet_NaN() : bounds.back();
}

HistogramSnapshot HistogramSnapshot::Minus(const HistogramSnapshot& earlier) const {
  HistogramSnapshot d = *this;
  if (earlier.counts.size() != counts.size()) return d;
  for (size_t i = 0; i < counts.size(); ++i) d.counts[i] = counts[i] >= earlier.counts[i] ? counts[i] - earlier.counts[i] : 0;
  d.sum = sum - earlier.sum;
  return d;
}

// ---------------------------------------------------------------- series

struct Metrics::ModelSeries {
  explicit ModelSeries(std::string n)
      : name(std::move(n)),
        queue(HistogramBuckets::Latency()),
        compute(HistogramBuckets::Latency()),
        total(HistogramBuckets::Latency()) {
    for (auto& r : requests) r.store(0, std::memory_order_relaxed);
  }
  const std::string name;  // the model id ("" for requests that reached no model)
  std::array<std::atomic<uint64_t>, kStatusCodes> requests;
  AtomicHistogram queue;
  AtomicHistogram compute;
  AtomicHistogram total;
};

struct Metrics::DeviceSeries {
  explicit DeviceSeries(std::string n) : name(std::move(n)), batch_size(HistogramBuckets::BatchSize()) {}
  const std::string name;
  AtomicHistogram batch_size;
};

struct Metrics::LoadSeries {
  LoadSeries() : duration(HistogramBuckets::LoadTime()) {}
  AtomicHistogram duration;
  uint64_t failures = 0;
  uint64_t last_version = 0;  // the last version whose load was counted
};

template <typename T>
T* SeriesTable<T>::Find(const Snapshot* s, const std::string& name) {
  if (!s) return nullptr;
  auto it = std::lower_bound(s->sorted.begin(), s->sorted.end(), name,
                             [](const T* a, const std::string& n) { return a->name < n; });
  return it != s->sorted.end() && (*it)->name == name ? *it : nullptr;
}

template <typename T>
T& SeriesTable<T>::Get(const std::string& name) {
  if (T* found = Find(Current(), name)) return *found;
  std::lock_guard<std::mutex> lock(mu_);
  const Snapshot* current = Current();
  if (T* found = Find(current, name)) return *found;
  owned_.push_back(std::make_unique<T>(name));
  T* created = owned_.back().get();
  auto next = std::make_unique<Snapshot>();
  if (current) next->sorted = current->sorted;
  next->sorted.insert(std::lower_bound(next->sorted.begin(), next->sorted.end(), name,
                                       [](const T* a, const std::string& n) { return a->name < n; }),
                      created);
  current_.store(next.get(), std::memory_order_release);
  snapshots_.push_back(std::move(next));
  return *created;
}

template <typename T>
std::vector<const T*> SeriesTable<T>::All() const {
  const Snapshot* s = Current();
  if (!s) return {};
  return std::vector<const T*>(s->sorted.begin(), s->sorted.end());
}

// ---------------------------------------------------------------- Metrics

Metrics::Metrics() : start_time_s_(UnixNow()) {}
Metrics::~Metrics() = default;

void Metrics::OnRequestDone(const std::string& model_id, StatusCode code, const JobTiming* timing) {
  ModelSeries& s = models_.Get(model_id);
  const int c = static_cast<int>(code);
  s.requests[c >= 0 && c < kStatusCodes ? c : static_cast<int>(StatusCode::kUnknown)].fetch_add(
      1, std::memory_order_relaxed);
  if (!timing) return;
  s.queue.Observe(Nanos(timing->started - timing->enqueued));
  s.total.Observe(Nanos(timing->finished - timing->enqueued));
  if (timing->batch_size > 0) s.compute.Observe(Nanos(timing->finished - timing->started));
}

void Metrics::OnBatch(const std::string& device, int batch_size) {
  devices_.Get(device).batch_size.Observe(batch_size);
}

void Metrics::OnModelState(const ModelStatus& status) {
  const bool loaded = status.state == ModelState::kReady && status.last_error.empty();
  const bool failed = !status.last_error.empty() &&
                      (status.state == ModelState::kFailed || status.state == ModelState::kReady);
  if (!loaded && !failed) return;
  std::lock_guard<std::mutex> lock(load_mu_);
  auto& series = loads_[status.id];
  if (!series) series = std::make_unique<LoadSeries>();
  if (failed) {
    ++series->failures;
  } else if (status.version != series->last_version) {
    series->last_version = status.version;
    series->duration.Observe(static_cast<int64_t>(std::llround(status.load_seconds * 1e9)));
  }
}

void Metrics::OnReload(bool ok) {
  reloads_.fetch_add(1, std::memory_order_relaxed);
  if (!ok) reload_failures_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<prometheus::MetricFamily> Metrics::Collect(const ModelManager* manager) const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;

  // Requests, from the request path.
  auto requests = Family("splitlearnd_requests_total",
                         "Finished requests by model and gRPC status code (model is empty when the request reached "
                         "no model).",
                         MetricType::Counter);
  auto queue = Family("splitlearnd_request_queue_seconds", "Time requests waited in their device queue.",
                      MetricType::Histogram);
  auto compute = Family("splitlearnd_request_compute_seconds",
                        "Time of the forward (or backward) that served a request, batch included.",
                        MetricType::Histogram);
  auto total = Family("splitlearnd_request_duration_seconds",
                      "Time from entering the device queue to the result.", MetricType::Histogram);
  for (const ModelSeries* s : models_.All()) {
    for (int c = 0; c < kStatusCodes; ++c) {
      const uint64_t n = s->requests[c].load(std::memory_order_relaxed);
      if (n == 0 && c != 0) continue;
      AddCounter(requests, {{"model", s->name}, {"code", StatusCodeName(static_cast<StatusCode>(c))}},
                 static_cast<double>(n));
    }
    if (s->name.empty()) continue;  // requests that reached no model never queued: no latencies
    AddHistogram(queue, {{"model", s->name}}, s->queue);
    AddHistogram(compute, {{"model", s->name}}, s->compute);
    AddHistogram(total, {{"model", s->name}}, s->total);
  }
  out.push_back(std::move(requests));
  out.push_back(std::move(queue));
  out.push_back(std::move(compute));
  out.push_back(std::move(total));

  // Devices.
  auto batch = Family("splitlearnd_batch_size", "Requests served by one forward, by device.", MetricType::Histogram);
  for (const DeviceSeries* d : devices_.All()) AddHistogram(batch, {{"device", d->name}}, d->batch_size);
  out.push_back(std::move(batch));
  if (manager) {
    auto depth = Family("splitlearnd_queue_depth", "Requests waiting in the device queue.", MetricType::Gauge);
    auto capacity = Family("splitlearnd_queue_capacity", "Size of the device queue.", MetricType::Gauge);
    auto alive = Family("splitlearnd_device_worker_alive", "1 while the device's worker thread runs.",
                        MetricType::Gauge);
    for (const DeviceStatus& d : manager->ListDevices()) {
      AddGauge(depth, {{"device", d.name}}, static_cast<double>(d.queue_depth));
      AddGauge(capacity, {{"device", d.name}}, static_cast<double>(d.queue_capacity));
      AddGauge(alive, {{"device", d.name}}, d.worker_alive ? 1 : 0);
    }
    out.push_back(std::move(depth));
    out.push_back(std::move(capacity));
    out.push_back(std::move(alive));
  }

  // Models.
  if (manager) {
    auto state = Family("splitlearnd_model_state", "1 for the state each model is in, 0 for the others.",
                        MetricType::Gauge);
    auto params = Family("splitlearnd_model_parameter_bytes", "Parameter and buffer bytes of the serving version.",
                         MetricType::Gauge);
    auto sessions = Family("splitlearnd_sessions_open", "Server-side KV-cache sessions open.", MetricType::Gauge);
    auto session_bytes = Family("splitlearnd_session_bytes", "Bytes held by the open sessions' caches.",
                                MetricType::Gauge);
    auto graphs = Family("splitlearnd_training_graphs", "Training forwards kept for their backward.",
                         MetricType::Gauge);
    static const ModelState kStates[] = {ModelState::kLoading, ModelState::kReady, ModelState::kUnloading,
                                         ModelState::kFailed, ModelState::kUnloaded};
    for (const ModelStatus& m : manager->ListModels()) {
      for (ModelState s : kStates) AddGauge(state, {{"model", m.id}, {"state", ModelStateName(s)}}, m.state == s);
      if (m.state != ModelState::kReady) continue;
      AddGauge(params, {{"model", m.id}}, static_cast<double>(m.parameter_bytes));
      auto route = manager->Peek(m.id);  // Peek: a scrape is not a use of the model
      if (!route.ok()) continue;
      const ModelStats stats = (*route)->model->Stats();
      AddGauge(sessions, {{"model", m.id}}, static_cast<double>(stats.sessions));
      AddGauge(session_bytes, {{"model", m.id}}, static_cast<double>(stats.session_bytes));
      AddGauge(graphs, {{"model", m.id}}, static_cast<double>(stats.training_graphs));
    }
    out.push_back(std::move(state));
    out.push_back(std::move(params));
    out.push_back(std::move(sessions));
    out.push_back(std::move(session_bytes));
    out.push_back(std::move(graphs));
  }
  {
    auto load = Family("splitlearnd_model_load_duration_seconds", "Load plus warmup time of each version that came up.",
                       MetricType::Histogram);
    auto failures = Family("splitlearnd_model_load_failures_total", "Loads that failed or were refused.",
                           MetricType::Counter);
    std::lock_guard<std::mutex> lock(load_mu_);
    for (const auto& [id, s] : loads_) {
      AddHistogram(load, {{"model", id}}, s->duration);
      AddCounter(failures, {{"model", id}}, static_cast<double>(s->failures));
    }
    out.push_back(std::move(load));
    out.push_back(std::move(failures));
  }

  // Reloads and the process.
  auto reloads = Family("splitlearnd_reloads_total", "Config reloads finished.", MetricType::Counter);
  AddCounter(reloads, {}, static_cast<double>(reloads_.load(std::memory_order_relaxed)));
  out.push_back(std::move(reloads));
  auto reload_failures = Family("splitlearnd_reload_failures_total",
                                "Config reloads refused (invalid file) or with a failed load.", MetricType::Counter);
  AddCounter(reload_failures, {}, static_cast<double>(reload_failures_.load(std::memory_order_relaxed)));
  out.push_back(std::move(reload_failures));
  auto rss = Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge);
  AddGauge(rss, {}, static_cast<double>(ProcessResidentBytes()));
  out.push_back(std::move(rss));
  auto start = Family("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.",
                      MetricType::Gauge);
  AddGauge(start, {}, start_time_s_);
  out.push_back(std::move(start));

  // A family without samples is noise in the exposition.
  out.erase(std::remove_if(out.begin(), out.end(), [](const prometheus::MetricFamily& f) { return f.metric.empty(); }),
            out.end());
  return out;
}

std::vector<Metrics::ModelRequests> Metrics::RequestSnapshot() const {
  std::vector<ModelRequests> out;
  for (const ModelSeries* s : models_.All()) {
    ModelRequests r;
    r.model = s->name;
    for (int c = 0; c < kStatusCodes; ++c) {
      const uint64_t n = s->requests[c].load(std::memory_order_relaxed);
      if (n == 0) continue;
      r.by_code[StatusCodeName(static_cast<StatusCode>(c))] = n;
      r.requests += n;
      if (c != 0) r.errors += n;
    }
    r.queue = s->queue.Snapshot();
    r.compute = s->compute.Snapshot();
    r.total = s->total.Snapshot();
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<Metrics::DeviceBatches> Metrics::BatchSnapshot() const {
  std::vector<DeviceBatches> out;
  for (const DeviceSeries* d : devices_.All()) out.push_back(DeviceBatches{d->name, d->batch_size.Snapshot()});
  return out;
}

std::string Metrics::RenderText(const ModelManager* manager) const {
  return prometheus::TextSerializer().Serialize(Collect(manager));
}

int64_t ProcessResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(resident) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

// ---------------------------------------------------------------- endpoint

namespace {

constexpr size_t kMaxRequestBytes = 8192;
constexpr int kClientTimeoutMs = 5000;

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the scraper went away or timed out
    sent += static_cast<size_t>(n);
  }
}

std::string HttpResponse(const char* status, const char* content_type, const std::string& body, bool head) {
  std::string r = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + content_type +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (!head) r += body;
  return r;
}

std::string ErrnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& listen, const Metrics* metrics,
                                                                  const ModelManager* manager) {
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return InvalidArgument("server.metrics_listen: expected host:port, got '" + listen + "'");
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "*") host = "0.0.0.0";

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return InvalidArgument("server.metrics_listen '" + listen + "': " + ::gai_strerror(rc));
  }
  std::unique_ptr<MetricsEndpoint> e(new MetricsEndpoint());
  e->metrics_ = metrics;
  e->manager_ = manager;
  std::string failure = "no address";
  for (addrinfo* a = found; a != nullptr && e->listen_fd_ < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      failure = ErrnoText("socket");
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      failure = ErrnoText("bind");
    } else if (::listen(fd, 16) != 0) {
      failure = ErrnoText("listen");
    } else {
      e->listen_fd_ = fd;
      break;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (e->listen_fd_ < 0) return Unavailable("metrics endpoint: cannot listen on " + listen + ": " + failure);

  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (::getsockname(e->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    e->bound_port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                       : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }
  e->bound_address_ = listen.substr(0, colon + 1) + std::to_string(e->bound_port_);
  e->wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (e->wake_fd_ < 0) return Internal("metrics endpoint: " + ErrnoText("eventfd"));
  e->thread_ = std::thread([endpoint = e.get()] { endpoint->Serve(); });
  return e;
}

MetricsEndpoint::~MetricsEndpoint() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
    thread_.join();
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void MetricsEndpoint::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[1].revents & POLLIN)) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // the client gave up, or too many files: try the next one
    Answer(fd);
    ::close(fd);
  }
}

void MetricsEndpoint::Answer(int fd) const {
  timeval timeout{kClientTimeoutMs / 1000, (kClientTimeoutMs % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  std::string request;
  char buf[1024];
  // The whole request must arrive within the timeout, not each piece of it: a client
  // that trickles a byte at a time cannot hold the endpoint's one thread.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kClientTimeoutMs);
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    if (request.size() > kMaxRequestBytes) {
      return SendAll(fd, HttpResponse("431 Request Header Fields Too Large", "text/plain", "", false));
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return;  // silent until the deadline, or an error
    const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return;  // closed or silent for too long
    request.append(buf, static_cast<size_t>(got));
  }
  // "GET /metrics?x=y HTTP/1.1"
  const std::string line = request.substr(0, request.find_first_of("\r\n"));
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  const std::string method = line.substr(0, sp1);
  std::string path = sp1 == std::string::npos ? "" : line.substr(sp1 + 1, sp2 == std::string::npos ? sp2 : sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    return SendAll(fd, HttpResponse("405 Method Not Allowed", "text/plain", "only GET and HEAD\n", false));
  }
  if (path != "/metrics") {
    return SendAll(fd, HttpResponse("404 Not Found", "text/plain", "splitlearnd serves its metrics at /metrics\n", head));
  }
  SendAll(fd, HttpResponse("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics_->RenderText(manager_), head));
}

}  // namespace splitlearnd
