// BatchPolicy: whether the device worker should wait for more requests to fill a batch.
//
// The worker holds the first request(s) of a batch and may wait, up to the model's
// max_delay_us, for compatible requests to join. Waiting pays only when others are
// about to arrive: a client with one request in flight sends its next one only after
// its answer, so nothing can join its batch and any wait is pure delay. The policy
// therefore learns, per model, from what the worker actually saw:
//
//  - forward time by batch rows: an average per row count (rows never run are read
//    off the nearest ones, linearly);
//  - arrivals after a batch was taken: from the moment the worker takes a batch (b
//    rows) until that batch's forward ends, how often the model's compatible pending
//    rows reached m (m = b+1 .. max rows), and how long after the take that happened.
//    A request that arrives only after the answers went out (a lone client's next
//    request) is never counted.
//
// With b rows in hand, an elapsed time e since the take and a bound, waiting for m rows
// is worth it when
//
//     q_m · (ω · max(τ_m − e, 0) + T(m)) / m  +  (1 − q_m) · (ω · g_m + T(b)) / b   <   T(b) / b
//
// where T(n) is the forward time at n rows, q_m the probability of reaching m, τ_m the
// average time to reach it, g_m how long the worker would wait in vain if it does not
// come (until τ_m + max(deviations · mean deviation, min_patience), or the bound), and
// ω the knob wait_weight (1).
// The left side is the expected worker time per row if it waits, the right side the
// time per row if it runs now. The worker waits until the give-up time of the m with
// the lowest cost, and asks again whenever something arrives. A model whose pending
// rows never grew during a batch (q = 0) never waits.
//
// Not thread-safe: the DeviceQueue calls it with its lock held. Times are passed in,
// so tests drive it with a clock of their own.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace splitlearnd {

class BatchPolicy {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;
  // Identifies a model; the policy keeps only a weak reference, and forgets what it
  // learnt once the model is gone.
  using ModelKey = std::shared_ptr<const void>;

  struct Knobs {
    double alpha = 0.2;      // weight of the newest observation in every average
    double deviations = 4;   // patience past τ_m, in mean deviations of the time to reach m
    std::chrono::microseconds min_patience{100};  // ... and at least this much
    // The share of a wait counted as lost worker time. 1: the worker could have run
    // something else meanwhile (a busy device); below 1 weighs the wait less than the
    // forward time it saves.
    double wait_weight = 1;
  };

  BatchPolicy() : BatchPolicy(Knobs{}) {}
  explicit BatchPolicy(Knobs knobs) : knobs_(knobs) {}

  // The worker took a batch of `rows` rows (at most `max_rows`) of `model` with batch
  // key `batch_key`: arrivals from now until Ran() are observed.
  void Took(const ModelKey& model, uint64_t batch_key, int64_t rows, int64_t max_rows, TimePoint now);
  // A request arrived (any model; only one that could join the taken batch counts).
  void Arrived(const void* model, uint64_t batch_key, int64_t rows, TimePoint now);
  // Holding `rows` rows of the taken batch: until when to wait for more, at most
  // `bound`. A time at or before `now` means: run now.
  TimePoint WaitUntil(int64_t rows, TimePoint now, TimePoint bound) const;
  // A forward of `model` over `rows` rows took `took`. Ends the observation of the
  // batch taken by Took() (if it was this model's) and learns from it.
  void Ran(const ModelKey& model, int64_t rows, Duration took);

  // What the policy believes, for tests and docs: forward time at `rows` (0: nothing
  // known), and the probability and mean time (µs) to reach `rows` pending rows.
  double ForwardUs(const void* model, int64_t rows) const;
  double ReachProbability(const void* model, int64_t rows) const;
  double ReachUs(const void* model, int64_t rows) const;
  size_t models() const { return models_.size(); }

  // Rows above this are not learnt (the config's max_batch_size limit).
  static constexpr int64_t kMaxRows = 4096;

 private:
  struct Stats {
    std::weak_ptr<const void> owner;
    std::vector<double> forward_us;  // by rows; 0: never ran
    std::vector<double> reach_p;     // by rows: probability that pending rows reach it
    std::vector<double> reach_us;    // ... mean time from the take, when they do
    std::vector<double> reach_dev_us;
  };
  struct Observation {
    bool open = false;
    const void* model = nullptr;
    Stats* stats = nullptr;
    uint64_t batch_key = 0;
    TimePoint taken{};
    int64_t first_rows = 0, rows = 0, max_rows = 0;
    std::vector<double> reached_us;  // by rows; < 0: not reached
  };

  Stats& StatsFor(const ModelKey& model);
  const Stats* Find(const void* model) const;
  static double Forward(const Stats& s, int64_t rows);
  static void Grow(std::vector<double>& v, int64_t rows, double fill);

  Knobs knobs_;
  std::unordered_map<const void*, Stats> models_;
  size_t prune_at_ = 16;
  Observation obs_;
};

}  // namespace splitlearnd
