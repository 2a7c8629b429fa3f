// Prometheus metrics: what the daemon counts, and the /metrics endpoint that shows it.
//
// Two parts with different lifetimes:
//  - Metrics holds the counters and histograms. It is fed on the request path
//    (OnRequestDone, from device workers and gRPC threads), by the manager's hooks
//    (OnBatch on device workers, OnModelState under the manager's lock) and by the
//    reload path (OnReload). Create it before the ModelManager whose hooks call it,
//    and keep it until that manager and the gRPC server are gone.
//  - MetricsEndpoint is the HTTP listener. Every scrape renders Metrics with
//    prometheus-cpp's text serializer and reads live figures from the ModelManager
//    (queue depths, model states, sessions). Create it after the manager and destroy
//    it before.
//
// Why not prometheus-cpp's Exposer: its civetweb server starts threads with a fixed
// 100 KiB stack, and in a process that links libtorch (whose static TLS is larger
// than that) pthread_create() refuses them with EINVAL. The endpoint here is one
// thread with a normal stack serving one short request at a time, which is what a
// Prometheus scrape needs.
//
// The request path costs a few relaxed atomic adds: per-model series are found
// through an immutable sorted snapshot (no lock, no allocation) and are created once,
// on the first request for a model. Names and meanings: docs/metrics.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "daemon/request_observer.h"
#include "manager/model_manager.h"

namespace prometheus {
struct MetricFamily;
}  // namespace prometheus

namespace splitlearnd {

// Bucket upper bounds of one kind of histogram, kept both as doubles (for the
// exposition) and as integers in `unit`s (for the lock-free hot path).
class HistogramBuckets {
 public:
  HistogramBuckets(std::vector<double> bounds, double unit);
  size_t size() const { return bounds_.size(); }
  double bound(size_t i) const { return bounds_[i]; }
  double unit() const { return unit_; }
  // Index of the first bucket whose bound is >= `scaled` (size() for +Inf).
  size_t Find(int64_t scaled) const;

  static const HistogramBuckets& Latency();    // seconds, counted in nanoseconds
  static const HistogramBuckets& BatchSize();  // requests per forward
  static const HistogramBuckets& LoadTime();   // seconds, counted in nanoseconds

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> scaled_;
  double unit_;
};

// A copy of one histogram at one moment, for status displays: quantiles since start,
// or over an interval as the difference of two snapshots.
struct HistogramSnapshot {
  std::vector<double> bounds;    // upper bounds; +Inf is implied after the last
  std::vector<uint64_t> counts;  // per bucket, not cumulative: bounds.size() + 1 entries
  double sum = 0;                // in base units (seconds, requests)

  uint64_t count() const;
  // Like PromQL's histogram_quantile(): linear inside the bucket that holds the rank;
  // the last finite bound when it falls in +Inf; NaN without samples.
  double Quantile(double q) const;
  // This snapshot less an earlier one of the same histogram.
  HistogramSnapshot Minus(const HistogramSnapshot& earlier) const;
};

// A histogram made of relaxed atomics: Observe() is wait-free.
class AtomicHistogram {
 public:
  explicit AtomicHistogram(const HistogramBuckets& buckets);
  void Observe(int64_t scaled);  // the value in the buckets' units

  HistogramSnapshot Snapshot() const;
  const HistogramBuckets& buckets() const { return buckets_; }
  uint64_t bucket_count(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  int64_t scaled_sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const HistogramBuckets& buckets_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // size()+1, not cumulative
  std::atomic<int64_t> sum_{0};
};

// Name -> series, created on first use and never removed. Get() is lock-free for a
// name seen before; the first Get() of a name takes a mutex and allocates.
template <typename T>
class SeriesTable {
 public:
  SeriesTable() = default;
  SeriesTable(const SeriesTable&) = delete;
  SeriesTable& operator=(const SeriesTable&) = delete;

  T& Get(const std::string& name);
  // Every series, sorted by name.
  std::vector<const T*> All() const;

 private:
  struct Snapshot {
    std::vector<T*> sorted;  // by T::name
  };
  const Snapshot* Current() const { return current_.load(std::memory_order_acquire); }
  static T* Find(const Snapshot* s, const std::string& name);

  std::atomic<const Snapshot*> current_{nullptr};
  std::mutex mu_;
  std::vector<std::unique_ptr<T>> owned_;
  std::vector<std::unique_ptr<const Snapshot>> snapshots_;  // old ones stay valid for readers
};

class Metrics final : public RequestObserver {
 public:
  Metrics();
  ~Metrics() override;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // One finished request (any thread). `model_id` is empty for a request that never
  // reached a model (unknown id, draining). `timing` is null when it never queued.
  void OnRequestDone(const std::string& model_id, StatusCode code, const JobTiming* timing) override;
  // One forward (or other job) ran on `device` serving `batch_size` requests.
  void OnBatch(const std::string& device, int batch_size);
  // The manager's state hook: counts load durations and load failures. Takes only
  // this object's own lock (the manager's lock is held by the caller).
  void OnModelState(const ModelStatus& status);
  // A reload finished: `ok` false when the file was invalid or a load it started failed.
  void OnReload(bool ok);

  // Everything counted here plus live figures from `manager` (may be null), as
  // Prometheus metric families.
  std::vector<prometheus::MetricFamily> Collect(const ModelManager* manager) const;
  // The same in the text exposition format (what /metrics serves).
  std::string RenderText(const ModelManager* manager) const;

  // The request figures of one model, for `splitlearnctl status` and the like.
  struct ModelRequests {
    std::string model;                        // "" : calls that reached no model
    uint64_t requests = 0;                    // every code
    uint64_t errors = 0;                      // every code but OK
    std::map<std::string, uint64_t> by_code;  // codes seen, by gRPC name
    HistogramSnapshot queue, compute, total;  // seconds
  };
  struct DeviceBatches {
    std::string device;
    HistogramSnapshot batch_size;  // requests per forward
  };
  std::vector<ModelRequests> RequestSnapshot() const;  // sorted by model
  std::vector<DeviceBatches> BatchSnapshot() const;    // sorted by device

 private:
  struct ModelSeries;
  struct DeviceSeries;
  struct LoadSeries;

  const double start_time_s_;  // Unix time when this object was made
  SeriesTable<ModelSeries> models_;
  SeriesTable<DeviceSeries> devices_;

  mutable std::mutex load_mu_;
  std::map<std::string, std::unique_ptr<LoadSeries>> loads_;
  std::atomic<uint64_t> reloads_{0};
  std::atomic<uint64_t> reload_failures_{0};
};

// The HTTP endpoint serving GET /metrics in Prometheus' text format (and 404 for
// other paths). One thread accepts and answers connections one at a time; a client
// whose request has not fully arrived within 5 seconds is dropped.
class MetricsEndpoint {
 public:
  // `listen` is "host:port" ("[v6addr]:port" for IPv6; port 0: any free port).
  // `metrics` and `manager` (may be null) must outlive the endpoint.
  static StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& listen, const Metrics* metrics,
                                                          const ModelManager* manager);
  ~MetricsEndpoint();  // stops the thread; no scrape runs after it returns
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // "host:port" actually bound.
  const std::string& bound_address() const { return bound_address_; }
  int bound_port() const { return bound_port_; }

 private:
  MetricsEndpoint() = default;
  void Serve();
  void Answer(int fd) const;

  const Metrics* metrics_ = nullptr;
  const ModelManager* manager_ = nullptr;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: written once to stop the thread
  std::string bound_address_;
  int bound_port_ = 0;
  std::thread thread_;
};

// Resident set size of this process in bytes (0 if /proc is unreadable).
int64_t ProcessResidentBytes();

}  // namespace splitlearnd
