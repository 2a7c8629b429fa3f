// Metrics without a daemon: what the counters and histograms render to, the lock-free
// series table under concurrent first use, and the HTTP endpoint on 127.0.0.1.
#include "daemon/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/support/catch.h"
#include <cmath>
#include <sstream>
#include <thread>

namespace splitlearnd {
namespace {

// The sample line for `series` (name with labels, as rendered), or "" if absent.
std::string Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return line.substr(series.size() + 1);
  }
  return "";
}

JobTiming Timing(double queue_s, double compute_s, int batch) {
  JobTiming t;
  t.enqueued = SteadyClock::time_point(std::chrono::seconds(100));
  t.started = t.enqueued + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(queue_s));
  t.finished = t.started + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(compute_s));
  t.batch_size = batch;
  return t;
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  REQUIRE(write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) reply.append(buf, static_cast<size_t>(n));
  close(fd);
  return reply;
}

}  // namespace

TEST_CASE("requests are counted by model and code, with their latencies", "[metrics]") {
  Metrics m;
  const JobTiming t = Timing(0.002, 0.030, 1);
  for (int i = 0; i < 3; ++i) m.OnRequestDone("m1", StatusCode::kOk, &t);
  m.OnRequestDone("m1", StatusCode::kInvalidArgument, nullptr);
  m.OnRequestDone("", StatusCode::kNotFound, nullptr);
  const std::string text = m.RenderText(nullptr);
  INFO(text);
  CHECK(Sample(text, R"(splitlearnd_requests_total{model="m1",code="OK"})") == "3");
  CHECK(Sample(text, R"(splitlearnd_requests_total{model="m1",code="INVALID_ARGUMENT"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_requests_total{model="",code="NOT_FOUND"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_requests_total{model="m1",code="NOT_FOUND"})").empty());  // never seen: absent
  // Only the three with a timing are in the histograms: 2 ms queue, 30 ms compute, 32 ms in all.
  CHECK(Sample(text, R"(splitlearnd_request_queue_seconds_count{model="m1"})") == "3");
  CHECK(Sample(text, R"(splitlearnd_request_queue_seconds_bucket{model="m1",le="0.001"})") == "0");
  CHECK(Sample(text, R"(splitlearnd_request_queue_seconds_bucket{model="m1",le="0.0025"})") == "3");
  CHECK(Sample(text, R"(splitlearnd_request_compute_seconds_bucket{model="m1",le="0.025"})") == "0");
  CHECK(Sample(text, R"(splitlearnd_request_compute_seconds_bucket{model="m1",le="0.05"})") == "3");
  CHECK(Sample(text, R"(splitlearnd_request_duration_seconds_bucket{model="m1",le="+Inf"})") == "3");
  CHECK(std::stod(Sample(text, R"(splitlearnd_request_duration_seconds_sum{model="m1"})")) == Approx(0.096));
}

TEST_CASE("a request dropped in the queue has a queue time but no compute time", "[metrics]") {
  Metrics m;
  const JobTiming t = Timing(0.5, 0, 0);
  m.OnRequestDone("m1", StatusCode::kDeadlineExceeded, &t);
  const std::string text = m.RenderText(nullptr);
  CHECK(Sample(text, R"(splitlearnd_request_queue_seconds_count{model="m1"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_request_compute_seconds_count{model="m1"})") == "0");
}

TEST_CASE("batch sizes are a histogram per device with a bucket for each small size", "[metrics]") {
  Metrics m;
  m.OnBatch("cpu", 4);
  m.OnBatch("cpu", 1);
  m.OnBatch("cuda:0", 3);
  const std::string text = m.RenderText(nullptr);
  INFO(text);
  CHECK(Sample(text, R"(splitlearnd_batch_size_bucket{device="cpu",le="3"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_batch_size_bucket{device="cpu",le="4"})") == "2");
  CHECK(Sample(text, R"(splitlearnd_batch_size_sum{device="cpu"})") == "5");
  CHECK(Sample(text, R"(splitlearnd_batch_size_count{device="cuda:0"})") == "1");
}

TEST_CASE("loads, load failures and reloads", "[metrics]") {
  Metrics m;
  ModelStatus s;
  s.id = "m1";
  s.state = ModelState::kLoading;
  m.OnModelState(s);
  s.state = ModelState::kReady;
  s.version = 1;
  s.load_seconds = 0.3;
  m.OnModelState(s);
  m.OnModelState(s);  // the same version again: counted once
  s.last_error = "new version failed";
  m.OnModelState(s);  // READY with an error: the old version serves, the new load failed
  m.OnReload(true);
  m.OnReload(false);
  const std::string text = m.RenderText(nullptr);
  INFO(text);
  CHECK(Sample(text, R"(splitlearnd_model_load_duration_seconds_count{model="m1"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_model_load_duration_seconds_bucket{model="m1",le="0.25"})") == "0");
  CHECK(Sample(text, R"(splitlearnd_model_load_duration_seconds_bucket{model="m1",le="0.5"})") == "1");
  CHECK(Sample(text, R"(splitlearnd_model_load_failures_total{model="m1"})") == "1");
  CHECK(Sample(text, "splitlearnd_reloads_total") == "2");
  CHECK(Sample(text, "splitlearnd_reload_failures_total") == "1");
  CHECK(std::stod(Sample(text, "process_resident_memory_bytes")) > 0);
}

TEST_CASE("series first used by many threads at once are counted exactly", "[metrics]") {
  Metrics m;
  constexpr int kThreads = 4, kPerThread = 20000, kModels = 12;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, t] {
      const JobTiming timing = Timing(0.0001, 0.001, 1);
      for (int i = 0; i < kPerThread; ++i) {
        m.OnRequestDone("model-" + std::to_string((i + t) % kModels), StatusCode::kOk, &timing);
        if (i % 100 == 0) m.OnBatch("cpu", 2);
      }
    });
  }
  for (auto& th : threads) th.join();
  const std::string text = m.RenderText(nullptr);
  uint64_t total = 0;
  for (int i = 0; i < kModels; ++i) {
    const std::string v = Sample(text, R"(splitlearnd_requests_total{model="model-)" + std::to_string(i) + R"(",code="OK"})");
    REQUIRE_FALSE(v.empty());
    total += std::stoull(v);
  }
  CHECK(total == kThreads * kPerThread);
  CHECK(Sample(text, R"(splitlearnd_batch_size_count{device="cpu"})") == std::to_string(kThreads * kPerThread / 100));
}

TEST_CASE("snapshots give counts by code and quantiles like histogram_quantile", "[metrics]") {
  Metrics m;
  // 90 requests of 2 ms and 10 of 40 ms in all; one error without a timing.
  const JobTiming fast = Timing(0.001, 0.001, 1), slow = Timing(0.010, 0.030, 2);
  for (int i = 0; i < 90; ++i) m.OnRequestDone("m1", StatusCode::kOk, &fast);
  for (int i = 0; i < 10; ++i) m.OnRequestDone("m1", StatusCode::kOk, &slow);
  m.OnRequestDone("m1", StatusCode::kResourceExhausted, nullptr);
  m.OnBatch("cpu", 2);
  const auto snap = m.RequestSnapshot();
  REQUIRE(snap.size() == 1);
  const auto& r = snap[0];
  CHECK(r.model == "m1");
  CHECK(r.requests == 101);
  CHECK(r.errors == 1);
  CHECK(r.by_code.at("OK") == 100);
  CHECK(r.by_code.at("RESOURCE_EXHAUSTED") == 1);
  CHECK(r.total.count() == 100);
  CHECK(r.total.sum == Approx(90 * 0.002 + 10 * 0.040));
  // p50 lies in the (0.001, 0.0025] bucket that holds all 90 fast ones: 0.001 + 0.0015 * 50/90.
  CHECK(r.total.Quantile(0.5) == Approx(0.001 + 0.0015 * 50.0 / 90.0));
  // p99 lies in the (0.025, 0.05] bucket of the slow ones: 0.025 + 0.025 * 9/10.
  CHECK(r.total.Quantile(0.99) == Approx(0.025 + 0.025 * 0.9));
  // Over an interval: only what happened since the earlier snapshot.
  for (int i = 0; i < 5; ++i) m.OnRequestDone("m1", StatusCode::kOk, &slow);
  const auto later = m.RequestSnapshot()[0].total.Minus(r.total);
  CHECK(later.count() == 5);
  CHECK(later.Quantile(0.5) == Approx(0.025 + 0.025 * 0.5));
  CHECK(std::isnan(HistogramSnapshot{}.Quantile(0.5)));
  const auto batches = m.BatchSnapshot();
  REQUIRE(batches.size() == 1);
  CHECK(batches[0].device == "cpu");
  CHECK(batches[0].batch_size.sum == 2);
  CHECK(batches[0].batch_size.Quantile(1.0) == 2);
}

TEST_CASE("the endpoint serves the text format on a free loopback port", "[metrics]") {
  Metrics m;
  m.OnRequestDone("m1", StatusCode::kOk, nullptr);
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", &m, nullptr);
  REQUIRE(endpoint.ok());
  const std::string address = (*endpoint)->bound_address();
  REQUIRE(address.rfind("127.0.0.1:", 0) == 0);
  const int port = std::stoi(address.substr(address.find(':') + 1));
  REQUIRE(port > 0);
  const std::string reply = HttpGet(port, "/metrics");
  INFO(reply);
  CHECK(reply.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(reply.find(R"(splitlearnd_requests_total{model="m1",code="OK"} 1)") != std::string::npos);
  CHECK(HttpGet(port, "/other").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(HttpGet(port, "/metrics?name[]=x").rfind("HTTP/1.1 200", 0) == 0);
}

TEST_CASE("a listen address that cannot be bound is an error, not a crash", "[metrics]") {
  Metrics m;
  CHECK_FALSE(MetricsEndpoint::Start("no-port-here", &m, nullptr).ok());
  auto first = MetricsEndpoint::Start("127.0.0.1:0", &m, nullptr);
  REQUIRE(first.ok());
  CHECK_FALSE(MetricsEndpoint::Start((*first)->bound_address(), &m, nullptr).ok());  // port taken
}

}  // namespace splitlearnd
