// loadgen: a closed-loop load generator for the legacy ComputeService.
//
// It keeps exactly --concurrency Compute calls in flight for --warmup-s + --duration-s
// seconds. Every call is started from gRPC's callback API (the generic stub's UnaryCall,
// with the request serialized once), and a finished call starts the next one from its
// completion callback, so no thread of ours blocks or spins per request: the generator
// costs little CPU on a machine it shares with the server under test. Only calls that
// finish inside the measured window count; their latencies give the percentiles.
//
// --alternate LABEL=TARGET[#MODEL] (repeatable) sends successive calls of each lane to
// each listed endpoint in turn, and reports every endpoint on its own: two servers (or
// two models) measured call by call under the same conditions, so that a drift in the
// machine's load falls on both alike.
//
// An --alternate TARGET of the form inprocess:FILE.pt is no server: the lane runs the
// shard itself through the daemon's TorchScript adapter (Model::Run, the span the
// daemon reports as compute time), on the gRPC thread that finished the lane's
// previous call. Alternated with a server's calls, it gives the in-process forward
// measured under the same traffic, call by call.
//
// --service-info prints GetServiceInfo's fields as key=value lines and exits (the
// benchmark script reads model parameter bytes from it).
#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "common/shape.h"
#include "compute.grpc.pb.h"
#include "manager/model.h"
#include "manager/torchscript/torchscript.h"

namespace {

namespace pb = splitlearn::comm;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string model;
  std::string shape = "1x10x768";
  int concurrency = 1;
  double duration_s = 10;
  double warmup_s = 2;
  int64_t max_requests = 0;  // 0: no limit; else stop after this many measured calls
  int64_t timeout_ms = 60000;
  std::string csv;
  std::string label;
  bool service_info = false;
  bool verify = true;
  std::vector<std::string> alternate;  // LABEL=TARGET[#MODEL]
  // For inprocess: targets, as the daemon's config would set them.
  int blas_threads = 0;        // devices.cpu.blas_threads
  int model_blas_threads = 0;  // models[].blas_threads
  bool optimize = false;        // models[].optimize
  bool prepack_linear = false;  // models[].prepack_linear
};

constexpr const char* kInProcess = "inprocess:";
constexpr const char* kComputeMethod = "/splitlearn.comm.ComputeService/Compute";

// Where calls go: one endpoint, or several taken in turn (--alternate).
struct Endpoint {
  std::string label, target, model;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::ComputeService::Stub> stub;
  // Compute goes through the generic stub with `request` serialized once: every call
  // sends the same bytes, and the client spends no CPU re-encoding them.
  std::unique_ptr<grpc::GenericStub> generic;
  grpc::ByteBuffer request_bytes;
  pb::ComputeRequest request;  // built once
  // inprocess: the model and the one request it runs (inputs over request.data()).
  std::shared_ptr<splitlearnd::Model> local;
  splitlearnd::InferenceRequest local_request;
};

// What one lane measured for one endpoint.
struct Stats {
  std::vector<int64_t> latencies_ns;  // measured calls only; one writer at a time
  // Latency minus the compute time the server reports (compute_time_ms), when it does.
  std::vector<int64_t> net_ns;
  std::vector<int64_t> compute_ns;  // the server-reported compute time itself
  std::vector<int64_t> queue_ns;    // the server-reported queue time
  int64_t errors = 0;
  int64_t bad_answers = 0;
  std::string first_error;
};

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

class Runner;

// One in-flight lane: a call, its context and response, restarted when it finishes.
struct Lane {
  Runner* runner = nullptr;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientContext> previous;  // kept one call longer: its call may still unwind
  pb::ComputeResponse response;
  grpc::ByteBuffer response_bytes;
  Clock::time_point started;
  size_t calls = 0;     // calls started by this lane
  size_t endpoint = 0;  // endpoint of the call in flight
  std::vector<Stats> stats;  // per endpoint
};

class Runner {
 public:
  Runner(const Options& opt, std::vector<Endpoint>* endpoints, int64_t expected_bytes)
      : opt_(opt), endpoints_(*endpoints), expected_bytes_(expected_bytes) {}

  void Run() {
    lanes_.resize(static_cast<size_t>(opt_.concurrency));
    const auto now = Clock::now();
    window_start_ = now + std::chrono::microseconds(static_cast<int64_t>(opt_.warmup_s * 1e6));
    window_end_ = window_start_ + std::chrono::microseconds(static_cast<int64_t>(opt_.duration_s * 1e6));
    active_ = opt_.concurrency;
    for (auto& lane : lanes_) {
      lane.runner = this;
      lane.stats.resize(endpoints_.size());
      for (auto& st : lane.stats) st.latencies_ns.reserve(4096);
      Start(&lane);
    }
    // Every lane stops starting calls at window_end_; the last call can take at most
    // the per-call deadline, so this wait is bounded.
    std::unique_lock<std::mutex> lock(mu_);
    const auto limit = window_end_ + std::chrono::milliseconds(opt_.timeout_ms) + std::chrono::seconds(5);
    if (!cv_.wait_until(lock, limit, [this] { return active_ == 0; })) {
      std::fprintf(stderr, "loadgen: %d call(s) still in flight after the deadline; giving up\n", active_);
      abandoned_ = true;
    }
  }

  bool abandoned() const { return abandoned_; }
  const std::vector<Lane>& lanes() const { return lanes_; }
  Clock::time_point window_start() const { return window_start_; }
  // End of the measured window: its planned end, or when --requests was reached.
  Clock::time_point measured_end() const {
    const Clock::rep early = measured_end_.load();
    return early == 0 ? window_end_ : Clock::time_point(Clock::duration(early));
  }

 private:
  void Start(Lane* lane) {
    // In-process endpoints run here, in turn, until a server's call is due.
    while (true) {
      lane->endpoint = lane->calls++ % endpoints_.size();
      Endpoint& e = endpoints_[lane->endpoint];
      if (!e.local) break;
      lane->started = Clock::now();
      auto results = e.local->Run({&e.local_request});
      const auto end = Clock::now();
      grpc::Status status;
      int64_t bytes = 0;
      if (results.size() != 1 || !results[0].ok()) {
        status = grpc::Status(grpc::StatusCode::INTERNAL, results.empty() ? "no result" : results[0].status().ToString());
      } else {
        bytes = static_cast<int64_t>(results[0]->outputs.front().tensor.nbytes);
      }
      if (!Account(lane, end, status, bytes, nullptr)) return;
    }
    lane->previous = std::move(lane->ctx);
    lane->ctx = std::make_unique<grpc::ClientContext>();
    lane->ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(opt_.timeout_ms));
    lane->response.Clear();
    Endpoint& e = endpoints_[lane->endpoint];
    lane->started = Clock::now();
    e.generic->UnaryCall(lane->ctx.get(), kComputeMethod, grpc::StubOptions(), &e.request_bytes, &lane->response_bytes,
                         [this, lane](grpc::Status status) {
                           if (status.ok() && !grpc::SerializationTraits<pb::ComputeResponse>::Deserialize(
                                                   &lane->response_bytes, &lane->response)
                                                   .ok()) {
                             status = grpc::Status(grpc::StatusCode::INTERNAL, "unparsable response");
                           }
                           Finished(lane, std::move(status));
                         });
  }

  void Finished(Lane* lane, grpc::Status status) {
    const auto end = Clock::now();
    if (Account(lane, end, status, static_cast<int64_t>(lane->response.data().size()), &lane->response)) Start(lane);
  }

  // Records the lane's call that ended at `end`; returns whether the lane goes on (if
  // not, it has signed off).
  bool Account(Lane* lane, Clock::time_point end, const grpc::Status& status, int64_t answer_bytes,
               const pb::ComputeResponse* response) {
    // A call counts when it finishes inside the window (after warmup the pipeline is
    // full, so this is the steady-state completion rate).
    const bool measured = end >= window_start_ && end <= window_end_ && !stop_.load(std::memory_order_relaxed);
    if (measured) {
      Stats& st = lane->stats[lane->endpoint];
      if (!status.ok()) {
        ++st.errors;
        if (st.first_error.empty()) {
          st.first_error = std::to_string(static_cast<int>(status.error_code())) + " " + status.error_message();
        }
      } else if (opt_.verify && answer_bytes != expected_bytes_) {
        ++st.bad_answers;
      } else {
        const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(end - lane->started).count();
        st.latencies_ns.push_back(ns);
        if (response && response->has_compute_time_ms()) {
          const auto compute = static_cast<int64_t>(static_cast<double>(response->compute_time_ms()) * 1e6);
          st.net_ns.push_back(ns - compute);
          st.compute_ns.push_back(compute);
          st.queue_ns.push_back(static_cast<int64_t>(static_cast<double>(response->queue_time_ms()) * 1e6));
        }
      }
    }
    bool more = end < window_end_ && !stop_.load(std::memory_order_relaxed);
    if (measured && opt_.max_requests > 0) {
      const int64_t n = measured_count_.fetch_add(1, std::memory_order_relaxed) + 1;
      if (n >= opt_.max_requests) {
        if (!stop_.exchange(true)) measured_end_.store(end.time_since_epoch().count());
        more = false;
      }
    }
    if (more) return true;
    std::lock_guard<std::mutex> lock(mu_);
    if (--active_ == 0) cv_.notify_all();
    return false;
  }

  const Options& opt_;
  std::vector<Endpoint>& endpoints_;
  const int64_t expected_bytes_;
  std::vector<Lane> lanes_;
  Clock::time_point window_start_, window_end_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> measured_count_{0};
  std::atomic<Clock::rep> measured_end_{0};

  std::mutex mu_;
  std::condition_variable cv_;
  int active_ = 0;
  bool abandoned_ = false;
};

int64_t Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  return sorted[static_cast<size_t>(rank + 0.5)];
}

int PrintServiceInfo(pb::ComputeService::Stub* stub, int64_t timeout_ms) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  pb::ServiceInfoRequest req;
  pb::ServiceInfoResponse resp;
  grpc::Status s = stub->GetServiceInfo(&ctx, req, &resp);
  if (!s.ok()) {
    std::fprintf(stderr, "loadgen: GetServiceInfo failed: %s\n", s.error_message().c_str());
    return 1;
  }
  std::printf("service_name=%s\nversion=%s\ndevice=%s\ntotal_requests=%lld\n", resp.service_name().c_str(),
              resp.version().c_str(), resp.device().c_str(), static_cast<long long>(resp.total_requests()));
  std::vector<std::pair<std::string, std::string>> info(resp.custom_info().begin(), resp.custom_info().end());
  std::sort(info.begin(), info.end());
  for (const auto& [k, v] : info) std::printf("%s=%s\n", k.c_str(), v.c_str());
  return 0;
}

// Prints one endpoint's results and appends its CSV row; returns false when it had
// errors, wrong answers or no answer at all.
bool Report(const Options& opt, const Endpoint& e, const std::vector<Lane>& lanes, size_t index, double window_s,
            double cpu, size_t endpoints) {
  std::vector<int64_t> lat, net, compute, queued;
  int64_t errors = 0, bad = 0;
  std::string first_error;
  for (const auto& lane : lanes) {
    const Stats& st = lane.stats[index];
    lat.insert(lat.end(), st.latencies_ns.begin(), st.latencies_ns.end());
    net.insert(net.end(), st.net_ns.begin(), st.net_ns.end());
    compute.insert(compute.end(), st.compute_ns.begin(), st.compute_ns.end());
    queued.insert(queued.end(), st.queue_ns.begin(), st.queue_ns.end());
    errors += st.errors;
    bad += st.bad_answers;
    if (first_error.empty()) first_error = st.first_error;
  }
  std::sort(lat.begin(), lat.end());
  std::sort(net.begin(), net.end());
  std::sort(compute.begin(), compute.end());
  std::sort(queued.begin(), queued.end());
  // p50 of (latency - server-reported compute time); -1 when the server reports none.
  const double net_p50 = net.empty() ? -1.0 : static_cast<double>(Percentile(net, 50)) / 1e3;
  const int64_t ok = static_cast<int64_t>(lat.size());
  double mean_us = 0;
  for (int64_t v : lat) mean_us += static_cast<double>(v) / 1e3;
  if (ok > 0) mean_us /= static_cast<double>(ok);
  const double rps = static_cast<double>(ok) / window_s;
  const double p50 = static_cast<double>(Percentile(lat, 50)) / 1e3, p90 = static_cast<double>(Percentile(lat, 90)) / 1e3,
               p99 = static_cast<double>(Percentile(lat, 99)) / 1e3,
               max = lat.empty() ? 0.0 : static_cast<double>(lat.back()) / 1e3;
  // The client's CPU is shared by the endpoints in proportion to their calls.
  const double share = endpoints > 1 ? 1.0 / static_cast<double>(endpoints) : 1.0;

  std::printf("%s%s%s target=%s model=%s shape=%s concurrency=%d window=%.2fs%s\n", e.label.c_str(),
              e.label.empty() ? "" : ": ", "loadgen", e.target.c_str(), e.model.empty() ? "(default)" : e.model.c_str(),
              opt.shape.c_str(), opt.concurrency, window_s,
              endpoints > 1 ? (" (one call in " + std::to_string(endpoints) + ")").c_str() : "");
  std::printf("  requests/s %.1f   ok %lld   errors %lld   wrong-size answers %lld\n", rps, static_cast<long long>(ok),
              static_cast<long long>(errors), static_cast<long long>(bad));
  std::printf("  latency us: p50 %.0f  p90 %.0f  p99 %.0f  max %.0f  mean %.0f\n", p50, p90, p99, max, mean_us);
  std::printf("  loadgen CPU %.2f s (%.1f us per request)\n", cpu * share,
              ok > 0 ? cpu * share * 1e6 / static_cast<double>(ok) : 0.0);
  if (net_p50 >= 0) {
    std::printf("  latency minus server-reported compute time: p50 %.0f us   (compute time itself: p50 %.0f us; queue time: "
                "p50 %.0f us)\n",
                net_p50, static_cast<double>(Percentile(compute, 50)) / 1e3, static_cast<double>(Percentile(queued, 50)) / 1e3);
  }
  if (!first_error.empty()) std::printf("  first error: %s\n", first_error.c_str());

  if (!opt.csv.empty()) {
    bool fresh = true;
    {
      std::ifstream probe(opt.csv);
      fresh = !probe.good() || probe.peek() == std::ifstream::traits_type::eof();
    }
    std::ofstream out(opt.csv, std::ios::app);
    if (!out) {
      std::fprintf(stderr, "loadgen: cannot write %s\n", opt.csv.c_str());
      return false;
    }
    if (fresh) {
      out << "label,model,shape,concurrency,window_s,ok,errors,bad,rps,p50_us,p90_us,p99_us,max_us,mean_us,"
             "client_cpu_s,net_p50_us\n";
    }
    char row[512];
    std::snprintf(row, sizeof row, "%s,%s,%s,%d,%.3f,%lld,%lld,%lld,%.2f,%.1f,%.1f,%.1f,%.1f,%.1f,%.3f,%.1f\n",
                  e.label.c_str(), e.model.c_str(), opt.shape.c_str(), opt.concurrency, window_s,
                  static_cast<long long>(ok), static_cast<long long>(errors), static_cast<long long>(bad), rps, p50, p90,
                  p99, max, mean_us, cpu * share, net_p50);
    out << row;
  }
  return errors == 0 && bad == 0 && ok > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"loadgen: closed-loop load on ComputeService.Compute (legacy float32 requests)"};
  app.add_option("--target", opt.target, "server address")->capture_default_str();
  app.add_option("--model", opt.model, "model_id (empty: the server's default model)");
  app.add_option("--shape", opt.shape, "input shape, e.g. 1x10x768")->capture_default_str();
  app.add_option("-c,--concurrency", opt.concurrency, "calls kept in flight")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--duration-s", opt.duration_s, "measured seconds")->capture_default_str()->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup-s", opt.warmup_s, "unmeasured seconds first")->capture_default_str()->check(CLI::Range(0.0, 600.0));
  app.add_option("--requests", opt.max_requests, "stop after this many measured calls (0: run for --duration-s)")
      ->capture_default_str();
  app.add_option("--timeout-ms", opt.timeout_ms, "deadline of each call")->capture_default_str()->check(CLI::Range(1, 3600000));
  app.add_option("--csv", opt.csv, "append one result row per endpoint to this CSV file (header written when the file is new)");
  app.add_option("--label", opt.label, "free text for the CSV row (e.g. server name)");
  app.add_option("--alternate", opt.alternate,
                 "LABEL=TARGET[#MODEL], repeatable: each lane sends its calls to these endpoints in turn (instead of "
                 "--target/--model/--label) and each is reported on its own");
  app.add_option("--blas-threads", opt.blas_threads,
                 "inprocess targets: the process's OpenBLAS threads, as devices.cpu.blas_threads (0: one per core)")
      ->capture_default_str();
  app.add_option("--model-blas-threads", opt.model_blas_threads,
                 "inprocess targets: the model's own OpenBLAS threads, as models[].blas_threads (0: the process's)")
      ->capture_default_str();
  app.add_flag("--optimize", opt.optimize, "inprocess targets: load as models[].optimize: true does");
  app.add_flag("--prepack-linear", opt.prepack_linear,
               "inprocess targets: with --optimize, pack Linear weights as models[].prepack_linear: true does");
  app.add_flag("--service-info", opt.service_info, "print GetServiceInfo as key=value lines and exit");
  app.add_flag("!--no-verify", opt.verify, "do not check that each answer has as many bytes as the request");
  CLI11_PARSE(app, argc, argv);
  // As the daemon does (ConfigureGrpcRuntime): no lock-order tracking on gRPC's mutexes.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  std::vector<Endpoint> endpoints;
  if (opt.alternate.empty()) {
    Endpoint e;
    e.label = opt.label;
    e.target = opt.target;
    e.model = opt.model;
    endpoints.push_back(std::move(e));
  } else {
    for (const std::string& spec : opt.alternate) {
      const size_t eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
        std::fprintf(stderr, "loadgen: --alternate wants LABEL=TARGET[#MODEL], got '%s'\n", spec.c_str());
        return 2;
      }
      const std::string rest = spec.substr(eq + 1);
      const size_t hash = rest.find('#');
      Endpoint e;
      e.label = spec.substr(0, eq);
      e.target = rest.substr(0, hash);
      e.model = hash == std::string::npos ? "" : rest.substr(hash + 1);
      endpoints.push_back(std::move(e));
    }
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(512 << 20);
  args.SetMaxSendMessageSize(512 << 20);
  // The client's optional filters (deadline and message size checks done on this
  // side) cost it about 15 % more CPU per call; the server under test still gets
  // each call's deadline, and the run as a whole is bounded (Runner::Run).
  args.SetInt(GRPC_ARG_MINIMAL_STACK, 1);
  bool any_local = false;
  for (Endpoint& e : endpoints) {
    if (e.target.rfind(kInProcess, 0) == 0) {
      if (!any_local) {
        splitlearnd::ThreadSettings threads;  // as the daemon's cpu device with intra_op_threads: 1
        threads.intra_op_threads = 1;
        threads.inter_op_threads = 1;
        threads.blas_threads = opt.blas_threads;
        splitlearnd::ConfigureTorchThreads(threads);
      }
      any_local = true;
      splitlearnd::ModelConfig config;
      config.id = e.label;
      config.path = e.target.substr(std::string(kInProcess).size());
      config.blas_threads = opt.model_blas_threads;
      config.optimize = opt.optimize;
      config.prepack_linear = opt.prepack_linear;
      auto model = splitlearnd::MakeTorchScriptLoader()->Load(config);
      if (!model.ok()) {
        std::fprintf(stderr, "loadgen: %s\n", model.status().ToString().c_str());
        return 1;
      }
      e.local = std::move(model.value());
      continue;
    }
    // One channel per endpoint (so never a shared connection between two of them).
    e.channel = grpc::CreateCustomChannel(e.target, grpc::InsecureChannelCredentials(), args);
    e.stub = pb::ComputeService::NewStub(e.channel);
    if (!e.channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      std::fprintf(stderr, "loadgen: cannot connect to %s\n", e.target.c_str());
      return 1;
    }
  }
  if (opt.service_info) {
    if (!endpoints.front().stub) return 2;
    return PrintServiceInfo(endpoints.front().stub.get(), opt.timeout_ms);
  }

  auto parsed = splitlearnd::ParseShape(opt.shape);
  if (!parsed.ok()) {
    std::fprintf(stderr, "loadgen: --shape: %s\n", parsed.status().message().c_str());
    return 2;
  }
  int64_t elements = 1;
  for (int64_t d : *parsed) elements *= d;  // ParseShape guarantees no overflow
  if (elements > (1LL << 30)) {
    std::fprintf(stderr, "loadgen: --shape '%s' has more than 2^30 elements\n", opt.shape.c_str());
    return 2;
  }
  const std::vector<int32_t> shape(parsed->begin(), parsed->end());  // each dimension <= elements
  std::string bytes;
  {
    std::vector<float> values(static_cast<size_t>(elements));
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (auto& v : values) v = normal(rng);
    bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  for (Endpoint& e : endpoints) {
    e.request.set_model_id(e.model);
    for (int32_t d : shape) e.request.add_shape(d);
    e.request.set_data(bytes);
    if (e.channel) {
      bool own = false;
      if (!grpc::SerializationTraits<pb::ComputeRequest>::Serialize(e.request, &e.request_bytes, &own).ok()) return 1;
      e.generic = std::make_unique<grpc::GenericStub>(e.channel);
    }
    if (e.local) {
      const std::string& data = e.request.data();  // stays put: the request is not touched again
      splitlearnd::HostTensor t{splitlearnd::DType::kFloat32, std::vector<int64_t>(shape.begin(), shape.end()),
                                data.data(), data.size(), nullptr};
      e.local_request.inputs.push_back(splitlearnd::NamedTensor{"", std::move(t)});
    }
  }
  const int64_t expected_bytes = elements * static_cast<int64_t>(sizeof(float));

  const double cpu0 = CpuSeconds();
  Runner runner(opt, &endpoints, expected_bytes);
  runner.Run();
  const double cpu = CpuSeconds() - cpu0;
  if (runner.abandoned()) {
    std::fflush(stdout);
    std::_Exit(3);  // calls still reference the runner: leave without destroying it
  }
  const double window_s = std::max(1e-9, std::chrono::duration<double>(runner.measured_end() - runner.window_start()).count());
  bool all_ok = true;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    all_ok = Report(opt, endpoints[i], runner.lanes(), i, window_s, cpu, endpoints.size()) && all_ok;
  }
  return all_ok ? 0 : 4;
}
