#include "manager/device_queue.h"

#include "tests/support/catch.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <future>

#include "common/cpus.h"
#include "tests/fakes/fake_model.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;

namespace {

struct Outcome {
  std::promise<std::pair<Status, int>> promise;  // status, batch size
};

// A job over a float32 [rows, 4] input owned by the job itself.
std::unique_ptr<Job> MakeJob(ModelHandle model, std::shared_ptr<Outcome> outcome, int64_t rows = 1,
                             uint64_t batch_key = 0, int max_batch = 1, int64_t max_delay_us = 0) {
  auto job = std::make_unique<Job>();
  auto values = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * 4), 1.0f);
  job->model = std::move(model);
  job->request.inputs.push_back(
      NamedTensor{"", HostTensor{DType::kFloat32, {rows, 4}, values->data(), values->size() * 4, values}});
  job->rows = rows;
  job->batch_key = batch_key;
  job->max_batch_size = max_batch;
  job->max_delay_us = max_delay_us;
  job->done = [outcome](StatusOr<InferenceResult> r, const JobTiming& t) {
    outcome->promise.set_value({r.status(), t.batch_size});
  };
  return job;
}

}  // namespace

TEST_CASE("every job runs on the one worker thread, in order") {
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 1024);
  std::vector<std::shared_ptr<Outcome>> outcomes;
  std::vector<std::thread> producers;
  std::mutex mu;
  std::atomic<int> refused{0};  // Catch2 assertions are not thread-safe: count here, check below
  for (int t = 0; t < 8; ++t) {
    producers.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto o = std::make_shared<Outcome>();
        auto job = MakeJob(model, o);
        if (!queue.TryEnqueue(job).ok()) {
          ++refused;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        outcomes.push_back(o);
      }
    });
  }
  for (auto& p : producers) p.join();
  REQUIRE(refused == 0);
  REQUIRE(outcomes.size() == 200);
  for (auto& o : outcomes) CHECK(o->promise.get_future().get().first.ok());
  CHECK(model->forwards() == 200);
  REQUIRE(model->threads().size() == 1);
  CHECK(*model->threads().begin() == queue.worker_thread_id());
  CHECK(queue.jobs_run() == 200);
}

TEST_CASE("a model that throws fails its batch with INTERNAL, and the worker goes on") {
  FakeBehaviour broken;
  broken.throw_run = true;
  auto bad = std::make_shared<FakeModel>("bad", "cpu", broken);
  auto good = std::make_shared<FakeModel>("good", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 16);
  auto o1 = std::make_shared<Outcome>();
  auto j1 = MakeJob(bad, o1);
  REQUIRE(queue.TryEnqueue(j1).ok());
  const auto r1 = o1->promise.get_future().get().first;
  CHECK(r1.code() == StatusCode::kInternal);
  CHECK(r1.message().find("fake model threw") != std::string::npos);
  auto o2 = std::make_shared<Outcome>();
  auto j2 = MakeJob(good, o2);
  REQUIRE(queue.TryEnqueue(j2).ok());
  CHECK(o2->promise.get_future().get().first.ok());
}

TEST_CASE("a full queue refuses at once and the caller keeps the job") {
  FakeBehaviour slow;
  slow.delay = 200ms;
  auto model = std::make_shared<FakeModel>("m", "cpu", slow);
  DeviceQueue queue("cpu", 2);
  std::vector<std::shared_ptr<Outcome>> accepted;
  // One job occupies the worker; two fill the queue.
  for (int i = 0; i < 3; ++i) {
    auto o = std::make_shared<Outcome>();
    auto job = MakeJob(model, o);
    REQUIRE(queue.TryEnqueue(job).ok());
    accepted.push_back(o);
    if (i == 0) {
      while (queue.depth() != 0) std::this_thread::sleep_for(1ms);  // taken by the worker
    }
  }
  auto o = std::make_shared<Outcome>();
  auto job = MakeJob(model, o);
  Status s = queue.TryEnqueue(job);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK(job != nullptr);  // still the caller's
  for (auto& a : accepted) CHECK(a->promise.get_future().get().first.ok());
}

TEST_CASE("a job whose deadline passes in the queue never runs") {
  FakeBehaviour slow;
  slow.delay = 300ms;
  auto model = std::make_shared<FakeModel>("m", "cpu", slow);
  DeviceQueue queue("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue.TryEnqueue(j1).ok());
  auto late = std::make_shared<Outcome>();
  auto j2 = MakeJob(model, late);
  j2->deadline = SteadyClock::now() + 50ms;
  REQUIRE(queue.TryEnqueue(j2).ok());
  CHECK(first->promise.get_future().get().first.ok());
  auto [status, batch] = late->promise.get_future().get();
  CHECK(status.code() == StatusCode::kDeadlineExceeded);
  CHECK(batch == 0);
  CHECK(model->forwards() == 1);
  CHECK(queue.jobs_dropped() == 1);
}

TEST_CASE("a cancelled job never runs") {
  FakeBehaviour slow;
  slow.delay = 200ms;
  auto model = std::make_shared<FakeModel>("m", "cpu", slow);
  DeviceQueue queue("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue.TryEnqueue(j1).ok());
  auto flag = std::make_shared<std::atomic<bool>>(false);
  auto cancelled = std::make_shared<Outcome>();
  auto j2 = MakeJob(model, cancelled);
  j2->cancelled = flag;
  REQUIRE(queue.TryEnqueue(j2).ok());
  flag->store(true);
  CHECK(first->promise.get_future().get().first.ok());
  CHECK(cancelled->promise.get_future().get().first.code() == StatusCode::kCancelled);
  CHECK(model->forwards() == 1);
}

TEST_CASE("compatible waiting jobs merge into one forward, up to max_batch_size rows") {
  FakeBehaviour slow;
  slow.delay = 100ms;
  auto model = std::make_shared<FakeModel>("m", "cpu", slow);
  DeviceQueue queue("cpu", 64);
  auto blocker = std::make_shared<Outcome>();
  auto jb = MakeJob(model, blocker);
  REQUIRE(queue.TryEnqueue(jb).ok());
  while (queue.depth() != 0) std::this_thread::sleep_for(1ms);
  // While the worker is busy: 5 jobs of key 7 (max 4 rows), 2 of key 9, one never-merge.
  std::vector<std::shared_ptr<Outcome>> k7, k9;
  for (int i = 0; i < 5; ++i) {
    k7.push_back(std::make_shared<Outcome>());
    auto j = MakeJob(model, k7.back(), 1, 7, 4);
    REQUIRE(queue.TryEnqueue(j).ok());
  }
  for (int i = 0; i < 2; ++i) {
    k9.push_back(std::make_shared<Outcome>());
    auto j = MakeJob(model, k9.back(), 1, 9, 4);
    REQUIRE(queue.TryEnqueue(j).ok());
  }
  std::vector<int> sizes7, sizes9;
  for (auto& o : k7) sizes7.push_back(o->promise.get_future().get().second);
  for (auto& o : k9) sizes9.push_back(o->promise.get_future().get().second);
  CHECK(sizes7 == std::vector<int>{4, 4, 4, 4, 1});
  CHECK(sizes9 == std::vector<int>{2, 2});
  CHECK(model->forwards() == 4);  // blocker, 4 of key 7, 2 of key 9, the 5th of key 7
}

TEST_CASE("with max_delay_us a lone job waits for company, up to the delay") {
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  auto a = std::make_shared<Outcome>();
  auto b = std::make_shared<Outcome>();
  auto ja = MakeJob(model, a, 1, 5, 2, 200000);  // up to 200 ms
  auto jb = MakeJob(model, b, 1, 5, 2, 200000);
  REQUIRE(queue.TryEnqueue(ja).ok());
  std::this_thread::sleep_for(20ms);
  REQUIRE(queue.TryEnqueue(jb).ok());
  CHECK(a->promise.get_future().get().second == 2);
  CHECK(b->promise.get_future().get().second == 2);
  CHECK(model->forwards() == 1);
}

TEST_CASE("stopping finishes queued jobs with UNAVAILABLE and refuses new ones") {
  FakeBehaviour slow;
  slow.delay = 100ms;
  auto model = std::make_shared<FakeModel>("m", "cpu", slow);
  auto queue = std::make_unique<DeviceQueue>("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue->TryEnqueue(j1).ok());
  while (queue->depth() != 0) std::this_thread::sleep_for(1ms);
  auto second = std::make_shared<Outcome>();
  auto j2 = MakeJob(model, second);
  REQUIRE(queue->TryEnqueue(j2).ok());
  queue->Stop();
  CHECK(first->promise.get_future().get().first.ok());
  CHECK(second->promise.get_future().get().first.code() == StatusCode::kUnavailable);
  auto o = std::make_shared<Outcome>();
  auto j3 = MakeJob(model, o);
  CHECK(queue->TryEnqueue(j3).code() == StatusCode::kUnavailable);
  CHECK_FALSE(queue->worker_alive());
}

TEST_CASE("with idle spin on, jobs arriving during and after the spin all run, and Stop still returns") {
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  queue.SetIdleSpin(20ms);
  for (int round = 0; round < 3; ++round) {
    // Two jobs close together (the second lands while the worker polls), then a pause
    // longer than the spin so that the next round finds the worker asleep.
    for (int i = 0; i < 2; ++i) {
      auto o = std::make_shared<Outcome>();
      auto job = MakeJob(model, o);
      REQUIRE(queue.TryEnqueue(job).ok());
      CHECK(o->promise.get_future().get().first.ok());
    }
    std::this_thread::sleep_for(40ms);
  }
  CHECK(model->forwards() == 6);
  CHECK(queue.jobs_run() == 6);
  REQUIRE(model->threads().size() == 1);
  CHECK(*model->threads().begin() == queue.worker_thread_id());
  // Stop while the worker polls: it notices the stop at its next poll, not at the end of the spin.
  queue.SetIdleSpin(std::chrono::microseconds(500000));
  auto o = std::make_shared<Outcome>();
  auto job = MakeJob(model, o);
  REQUIRE(queue.TryEnqueue(job).ok());
  CHECK(o->promise.get_future().get().first.ok());
  queue.Stop();
  CHECK_FALSE(queue.worker_alive());
}

TEST_CASE("the worker is named after its device and runs on the CPUs it is given") {
  const std::vector<int> allowed = AllowedCpus();
  REQUIRE_FALSE(allowed.empty());
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 8);
  // What the worker sees of itself, from inside a job.
  auto probe = [&]() {
    auto seen = std::make_shared<std::pair<std::string, std::vector<int>>>();
    auto o = std::make_shared<Outcome>();
    auto job = MakeJob(model, o);
    job->custom = [seen](const Model&) -> StatusOr<InferenceResult> {
      char name[16] = {};
      pthread_getname_np(pthread_self(), name, sizeof name);
      seen->first = name;
      cpu_set_t set;
      CPU_ZERO(&set);
      sched_getaffinity(0, sizeof set, &set);
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) seen->second.push_back(c);
      }
      return InferenceResult{};
    };
    REQUIRE(queue.TryEnqueue(job).ok());
    REQUIRE(o->promise.get_future().get().first.ok());
    return *seen;
  };
  auto first = probe();
  CHECK(first.first == "sld-cpu");
  CHECK(first.second == allowed);

  queue.SetCpus({allowed.back()});
  CHECK(probe().second == std::vector<int>{allowed.back()});
  CHECK(queue.cpus() == std::vector<int>{allowed.back()});
  // Empty: back to every CPU the process may use.
  queue.SetCpus({});
  CHECK(probe().second == allowed);
  CHECK(queue.pin_failures() == 0);
}
