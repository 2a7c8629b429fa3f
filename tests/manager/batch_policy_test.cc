#include "manager/batch_policy.h"

#include "tests/support/catch.h"

#include <algorithm>
#include <deque>
#include <functional>

using namespace splitlearnd;
using namespace std::chrono_literals;

namespace {

using TimePoint = BatchPolicy::TimePoint;

// A clock of the test's own: microseconds since an arbitrary start.
struct FakeClock {
  TimePoint start = TimePoint{} + 1h;
  TimePoint At(double us) const {
    return start + std::chrono::duration_cast<BatchPolicy::Duration>(std::chrono::duration<double, std::micro>(us));
  }
  double Us(TimePoint t) const { return std::chrono::duration<double, std::micro>(t - start).count(); }
};

BatchPolicy::Duration Micros(double us) {
  return std::chrono::duration_cast<BatchPolicy::Duration>(std::chrono::duration<double, std::micro>(us));
}

// One device worker serving closed-loop clients, driven by the policy on the fake
// clock: each client sends its next request `return_us` (plus up to `jitter_us`) after
// its answer; a forward of n rows takes forward_us(n). Arrivals are reported to the
// policy in time order.
struct Simulation {
  FakeClock clock;
  BatchPolicy policy;
  BatchPolicy::ModelKey model = std::make_shared<int>(1);
  const uint64_t key = 42;
  int64_t max_rows = 8;
  double max_delay_us = 2000;
  double return_us = 300;
  double jitter_us = 100;
  uint32_t seed = 1;
  std::function<double(int64_t)> forward_us = [](int64_t n) { return 5000 + 2000 * static_cast<double>(n); };

  double now = 0;
  std::deque<double> queue;      // arrival times of requests waiting for the worker
  std::vector<double> returning;  // when the clients out there send their next request

  // What the batches did (since Reset()).
  int64_t batches = 0, rows = 0, delayed = 0;
  double waited_us = 0, longest_wait_us = 0;
  double request_us = 0;  // summed arrival-to-answer time
  bool bound_kept = true;

  void AddClients(int n) {
    for (int i = 0; i < n; ++i) returning.push_back(now);
  }
  void RemoveClients(size_t n) {  // n clients leave: those queued first, then the next to come back
    for (; n > 0 && !queue.empty(); --n) queue.pop_back();
    std::sort(returning.begin(), returning.end());
    returning.erase(returning.begin(), returning.begin() + static_cast<ptrdiff_t>(std::min(n, returning.size())));
  }
  double since = 0;
  void Reset() {
    batches = rows = delayed = 0, waited_us = longest_wait_us = request_us = 0, bound_kept = true;
    since = now;
  }
  double MeanBatch() const { return batches ? static_cast<double>(rows) / static_cast<double>(batches) : 0; }
  double Throughput() const { return static_cast<double>(rows) / ((now - since) / 1e6); }
  double MeanLatencyUs() const { return request_us / static_cast<double>(rows); }

  // Moves the clients due by `until` into the queue, in time order, telling the policy.
  void Deliver(double until) {
    std::sort(returning.begin(), returning.end());
    while (!returning.empty() && returning.front() <= until) {
      const double at = returning.front();
      returning.erase(returning.begin());
      policy.Arrived(model.get(), key, 1, clock.At(at));
      queue.push_back(at);
    }
  }

  void Batch() {
    Deliver(now);
    if (queue.empty()) {
      now = *std::min_element(returning.begin(), returning.end());
      Deliver(now);
    }
    std::vector<double> held;
    while (!queue.empty() && static_cast<int64_t>(held.size()) < max_rows) {
      held.push_back(queue.front());
      queue.pop_front();
    }
    const double taken = now;
    policy.Took(model, key, static_cast<int64_t>(held.size()), max_rows, clock.At(now));
    const TimePoint bound = clock.At(now + max_delay_us);  // the longest the worker may hold the batch
    while (static_cast<int64_t>(held.size()) < max_rows) {
      const TimePoint until = policy.WaitUntil(static_cast<int64_t>(held.size()), clock.At(now), bound);
      if (until > bound) bound_kept = false;
      if (until <= clock.At(now)) break;
      const double until_us = clock.Us(until);
      double next = 1e300;
      for (double r : returning) next = std::min(next, r);
      if (next <= until_us) {
        now = next;
        Deliver(now);
        while (!queue.empty() && static_cast<int64_t>(held.size()) < max_rows) {
          held.push_back(queue.front());
          queue.pop_front();
        }
      } else {
        now = until_us;
      }
    }
    const double wait = now - taken;
    waited_us += wait;
    longest_wait_us = std::max(longest_wait_us, wait);
    if (wait > 0) ++delayed;
    const int64_t n = static_cast<int64_t>(held.size());
    const double took = forward_us(n);
    Deliver(now + took);  // arrivals during the forward
    now += took;
    policy.Ran(model, n, Micros(took));
    ++batches;
    rows += n;
    for (double at : held) {
      request_us += now - at;
      seed = seed * 1664525u + 1013904223u;
      returning.push_back(now + return_us + jitter_us * (seed >> 8) / double(1u << 24));
    }
  }
  void Run(int n) {
    for (int i = 0; i < n; ++i) Batch();
  }
};

}  // namespace

TEST_CASE("a lone client is never delayed") {
  Simulation sim;
  sim.AddClients(1);
  SECTION("from the start") {}
  SECTION("after the model learnt its forward times at every size") {
    for (int64_t n = 1; n <= 8; ++n) sim.policy.Ran(sim.model, n, Micros(sim.forward_us(n)));
  }
  SECTION("with a client that comes back at once") { sim.return_us = 1; }
  sim.Run(2000);
  CHECK(sim.batches == 2000);
  CHECK(sim.delayed == 0);
  CHECK(sim.waited_us == 0);
  CHECK(sim.MeanBatch() == 1);
  CHECK(sim.policy.ReachProbability(sim.model.get(), 2) == 0);
}

TEST_CASE("a lone client is not delayed by another model's traffic") {
  Simulation sim;
  sim.AddClients(1);
  auto other = std::make_shared<int>(2);
  // Another model's requests arrive during every batch of this one.
  for (int i = 0; i < 200; ++i) {
    sim.policy.Took(sim.model, sim.key, 1, 8, sim.clock.At(i * 1000.0));
    sim.policy.Arrived(other.get(), sim.key, 1, sim.clock.At(i * 1000.0 + 10));
    sim.policy.Arrived(sim.model.get(), sim.key + 1, 1, sim.clock.At(i * 1000.0 + 20));  // another shape
    sim.policy.Ran(sim.model, 1, 500us);
  }
  CHECK(sim.policy.ReachProbability(sim.model.get(), 2) == 0);
  sim.policy.Took(sim.model, sim.key, 1, 8, sim.clock.At(1e6));
  CHECK(sim.policy.WaitUntil(1, sim.clock.At(1e6), sim.clock.At(1e6 + 2000)) == sim.clock.At(1e6));
}

TEST_CASE("with a steady fast arrival rate it waits and forms batches") {
  // Eight clients; a forward of n rows costs 5 + 2n ms, so a batch of 8 serves twice
  // as many requests per second as one of 4. Without waiting the worker settles into
  // alternating half batches: 4 answered while the other 4 arrive.
  Simulation waiting;
  waiting.AddClients(8);
  Simulation eager = waiting;
  eager.max_delay_us = 0;
  waiting.Run(200);
  eager.Run(200);
  waiting.Reset();
  eager.Reset();
  waiting.Run(500);
  eager.Run(500);
  CHECK(eager.MeanBatch() < 5);
  CHECK(waiting.MeanBatch() > 7.9);
  CHECK(waiting.Throughput() > 1.15 * eager.Throughput());
  CHECK(waiting.MeanLatencyUs() < 0.9 * eager.MeanLatencyUs());
  CHECK(waiting.bound_kept);
  // The first client back starts a batch; it waits about as long as the others take
  // to follow.
  CHECK(waiting.longest_wait_us < 2 * waiting.jitter_us);
  CHECK(waiting.policy.ReachProbability(waiting.model.get(), 8) > 0.9);
  CHECK(waiting.policy.ReachUs(waiting.model.get(), 8) < waiting.jitter_us);
}

TEST_CASE("it does not wait when a larger batch costs as much per row") {
  Simulation sim;
  sim.forward_us = [](int64_t n) { return 1000.0 * static_cast<double>(n); };
  sim.AddClients(8);
  sim.Run(500);
  CHECK(sim.delayed == 0);
  CHECK(sim.policy.ReachProbability(sim.model.get(), 8) > 0.5);  // they do come, but it does not pay
}

TEST_CASE("it stops waiting once the expected gain is gone") {
  Simulation sim;
  sim.AddClients(8);
  sim.Run(300);
  REQUIRE(sim.policy.ReachProbability(sim.model.get(), 8) > 0.9);
  const double tau = sim.policy.ReachUs(sim.model.get(), 8);

  SECTION("company expected but late: it gives up soon after it was due") {
    const double t = sim.now + 1e5;
    sim.policy.Took(sim.model, sim.key, 1, 8, sim.clock.At(t));
    const TimePoint bound = sim.clock.At(t + 2000);
    const TimePoint give_up = sim.policy.WaitUntil(1, sim.clock.At(t), bound);
    REQUIRE(give_up > sim.clock.At(t));
    CHECK(give_up < bound);
    CHECK(sim.clock.Us(give_up) - t > tau);
    // Nothing came: at the time it named, it runs.
    CHECK(sim.policy.WaitUntil(1, give_up, bound) == give_up);
    CHECK(sim.policy.WaitUntil(1, give_up + 1ms, bound) == give_up + 1ms);
  }
}

TEST_CASE("the last rows are not worth a long wait") {
  // Seven rows arrive within 70 µs of each take, the eighth only after 1000 µs. A
  // forward of n rows costs 5 + 2n ms: with 7 rows in hand the eighth saves 89 µs per
  // row, and waiting 1000 µs for it costs 125 µs per row.
  FakeClock clock;
  BatchPolicy policy;
  auto model = std::make_shared<int>(5);
  double t = 0;
  for (int i = 0; i < 50; ++i, t += 1e5) {
    policy.Took(model, 1, 1, 8, clock.At(t));
    for (int k = 1; k <= 6; ++k) policy.Arrived(model.get(), 1, 1, clock.At(t + 10 * k));
    policy.Arrived(model.get(), 1, 1, clock.At(t + 1000));
    policy.Ran(model, 8, Micros(21000));
    for (int64_t n = 1; n <= 7; ++n) policy.Ran(model, n, Micros(5000 + 2000 * static_cast<double>(n)));
  }
  REQUIRE(policy.ReachUs(model.get(), 8) == Approx(1000));
  REQUIRE(policy.ReachUs(model.get(), 7) == Approx(60));

  policy.Took(model, 1, 1, 8, clock.At(t));
  const TimePoint bound = clock.At(t + 2000);
  // One row in hand: it waits, for the seven that come quickly, not for the eighth.
  const TimePoint until = policy.WaitUntil(1, clock.At(t), bound);
  CHECK(until > clock.At(t + 60));
  CHECK(until < clock.At(t + 1000));
  // Seven in hand: it runs.
  CHECK(policy.WaitUntil(7, clock.At(t + 60), bound) == clock.At(t + 60));
  // Were the eighth as quick as the others, it would wait for it too.
  for (int i = 0; i < 50; ++i, t += 1e5) {
    policy.Took(model, 1, 1, 8, clock.At(t));
    for (int k = 1; k <= 7; ++k) policy.Arrived(model.get(), 1, 1, clock.At(t + 10 * k));
    policy.Ran(model, 8, Micros(21000));
  }
  policy.Took(model, 1, 7, 8, clock.At(t));
  CHECK(policy.WaitUntil(7, clock.At(t), clock.At(t + 2000)) > clock.At(t));
}

TEST_CASE("max_delay_us bounds every wait") {
  SECTION("clients that come back within the bound") {
    for (double delay : {100.0, 500.0, 2000.0}) {
      Simulation sim;
      sim.max_delay_us = delay;
      sim.AddClients(8);
      sim.Run(400);
      CHECK(sim.bound_kept);
      CHECK(sim.longest_wait_us <= delay);
    }
  }
  SECTION("clients that come back only after the bound: no wait at all") {
    Simulation sim;
    sim.max_delay_us = 2000;
    sim.return_us = 3000;
    sim.AddClients(8);
    sim.Run(400);
    CHECK(sim.bound_kept);
    CHECK(sim.longest_wait_us <= 2000);
  }
  SECTION("a bound already passed") {
    Simulation sim;
    sim.AddClients(8);
    sim.Run(300);
    const TimePoint t = sim.clock.At(sim.now + 1e5);
    sim.policy.Took(sim.model, sim.key, 1, 8, t);
    CHECK(sim.policy.WaitUntil(1, t, t) == t);
    CHECK(sim.policy.WaitUntil(1, t, t - 1us) == t);
    const TimePoint until = sim.policy.WaitUntil(1, t, t + 10us);
    CHECK(until <= t + 10us);
  }
}

TEST_CASE("the estimates adapt when the rate changes") {
  Simulation sim;
  sim.AddClients(8);
  sim.Run(300);
  CHECK(sim.MeanBatch() > 7);

  // Down to one client: after a few batches spent finding out, no more waiting.
  sim.RemoveClients(7);
  sim.Reset();
  sim.Run(40);
  CHECK(sim.delayed < 20);
  sim.Reset();
  sim.Run(500);
  CHECK(sim.delayed == 0);
  CHECK(sim.policy.ReachProbability(sim.model.get(), 2) < 0.01);

  // Back to eight: batches fill again.
  sim.AddClients(7);
  sim.Run(100);
  sim.Reset();
  sim.Run(300);
  CHECK(sim.MeanBatch() > 7.9);

  // Clients that straggle: the times it expects follow, and it still fills batches.
  const double before = sim.policy.ReachUs(sim.model.get(), 8);
  sim.jitter_us = 1500;
  sim.Run(300);
  CHECK(sim.policy.ReachUs(sim.model.get(), 8) > before + 500);
  sim.Reset();
  sim.Run(300);
  CHECK(sim.MeanBatch() > 7.5);
  CHECK(sim.bound_kept);

  // Five clients: it stops waiting for a sixth to eighth.
  sim.jitter_us = 100;
  sim.RemoveClients(3);
  sim.Run(100);
  sim.Reset();
  sim.Run(300);
  CHECK(sim.MeanBatch() == Approx(5).margin(0.01));
  CHECK(sim.longest_wait_us < 2 * sim.jitter_us);
  CHECK(sim.policy.ReachProbability(sim.model.get(), 6) < 0.01);
}

TEST_CASE("wait_weight below 1 weighs a wait less than the forward time it saves") {
  // A forward of n rows costs 150 + 90n µs and the clients take 400 µs to come back:
  // a batch of 8 saves less per row than the wait for the others costs, unless the
  // wait counts for little.
  auto run = [](double weight) {
    Simulation sim;
    BatchPolicy::Knobs knobs;
    knobs.wait_weight = weight;
    sim.policy = BatchPolicy(knobs);
    sim.forward_us = [](int64_t n) { return 150 + 90 * static_cast<double>(n); };
    sim.return_us = 400;
    sim.AddClients(8);
    sim.Run(300);
    sim.Reset();
    sim.Run(500);
    return sim;
  };
  const Simulation full = run(1), none = run(0);
  CHECK(full.MeanBatch() < 6);
  CHECK(none.MeanBatch() > 7.9);
  CHECK(none.bound_kept);
  CHECK(none.longest_wait_us < 2 * none.return_us);
}

TEST_CASE("forward times of sizes never run are read off the nearest ones") {
  BatchPolicy policy;
  auto model = std::make_shared<int>(3);
  CHECK(policy.ForwardUs(model.get(), 4) == 0);
  policy.Ran(model, 2, 300us);
  CHECK(policy.ForwardUs(model.get(), 2) == Approx(300));
  CHECK(policy.ForwardUs(model.get(), 6) == Approx(300));  // one size seen: flat
  policy.Ran(model, 6, 700us);
  CHECK(policy.ForwardUs(model.get(), 4) == Approx(500));  // between: linear
  CHECK(policy.ForwardUs(model.get(), 8) == Approx(900));  // above: the line goes on
  CHECK(policy.ForwardUs(model.get(), 1) == Approx(200));  // below too
  policy.Ran(model, 2, 400us);                             // averages move
  CHECK(policy.ForwardUs(model.get(), 2) > 300);
  CHECK(policy.ForwardUs(model.get(), 2) < 400);
}

TEST_CASE("what it learnt goes with the model") {
  BatchPolicy policy;
  auto model = std::make_shared<int>(4);
  const void* address = model.get();
  policy.Ran(model, 1, 300us);
  REQUIRE(policy.ForwardUs(address, 1) > 0);
  model.reset();
  CHECK(policy.ForwardUs(address, 1) == 0);
  std::vector<std::shared_ptr<int>> many;
  for (int i = 0; i < 100; ++i) {
    auto m = std::make_shared<int>(i);
    policy.Ran(m, 1, 300us);
    if (i % 10 == 0) many.push_back(m);  // the rest are freed at once
  }
  CHECK(policy.models() < 40);
}
