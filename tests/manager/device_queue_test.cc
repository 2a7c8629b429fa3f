#include "manager/device_queue.h"

#include "tests/support/catch.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <future>

#include "common/cpus.h"
#include "tests/support/fake_model.h"
#include "tests/support/wait.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;

namespace {

struct Outcome {
  std::promise<std::pair<Status, int>> promise;  // status, batch size
  JobTiming timing;                               // set before the promise
};

// A job over a float32 [rows, 4] input owned by the job itself.
std::unique_ptr<Job> MakeJob(ModelHandle model, std::shared_ptr<Outcome> outcome, int64_t rows = 1,
                             uint64_t batch_key = 0, int max_batch = 1, int64_t max_delay_us = 0,
                             bool fixed_wait = false) {
  auto job = std::make_unique<Job>();
  auto values = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * 4), 1.0f);
  job->model = std::move(model);
  job->request.inputs.push_back(
      NamedTensor{"", HostTensor{DType::kFloat32, {rows, 4}, values->data(), values->size() * 4, values}});
  job->rows = rows;
  job->batch_key = batch_key;
  job->max_batch_size = max_batch;
  job->max_delay_us = max_delay_us;
  job->fixed_wait = fixed_wait;
  job->done = [outcome](StatusOr<InferenceResult> r, const JobTiming& t) {
    outcome->timing = t;
    outcome->promise.set_value({r.status(), t.batch_size});
  };
  return job;
}

// A fake model whose forwards wait at `gate`.
std::shared_ptr<FakeModel> GatedModel(std::shared_ptr<Gate> gate) {
  FakeBehaviour b;
  b.gate = std::move(gate);
  return std::make_shared<FakeModel>("m", "cpu", b);
}

// The job's status and batch size; the test fails if it has none within kWaitBound.
std::pair<Status, int> Await(const std::shared_ptr<Outcome>& outcome) {
  auto result = outcome->promise.get_future();
  REQUIRE(result.wait_for(kWaitBound) == std::future_status::ready);
  return result.get();
}

// The worker thread as the kernel sees it: its thread id (for its scheduler state)
// and its CPU-time clock.
struct WorkerView {
  pid_t tid = 0;
  clockid_t cpu_clock{};

  std::chrono::nanoseconds CpuTime() const {
    timespec ts{};
    clock_gettime(cpu_clock, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  }
  // As /proc shows it: 'R' running or runnable, 'S' asleep.
  char State() const {
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string stat;
    std::getline(in, stat);
    const size_t name_end = stat.rfind(')');  // the state follows the thread's name
    return name_end == std::string::npos || name_end + 2 >= stat.size() ? '?' : stat[name_end + 2];
  }
  // Until the worker, with no job to run, has used 20 ms of CPU: only its idle spin
  // does that. False if kWaitBound passed first.
  bool WaitForSpin() const {
    const auto start = CpuTime();
    return WaitUntil([&] { return CpuTime() - start >= 20ms; });
  }
};

// Learns the view from inside a job that the worker runs.
WorkerView ViewWorker(DeviceQueue& queue, const ModelHandle& model) {
  auto view = std::make_shared<WorkerView>();
  auto o = std::make_shared<Outcome>();
  auto job = MakeJob(model, o);
  job->custom = [view](const Model&) -> StatusOr<InferenceResult> {
    view->tid = gettid();
    pthread_getcpuclockid(pthread_self(), &view->cpu_clock);
    return InferenceResult{};
  };
  REQUIRE(queue.TryEnqueue(job).ok());
  REQUIRE(Await(o).first.ok());
  return *view;
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
  for (auto& o : outcomes) CHECK(Await(o).first.ok());
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
  const auto r1 = Await(o1).first;
  CHECK(r1.code() == StatusCode::kInternal);
  CHECK(r1.message().find("fake model threw") != std::string::npos);
  auto o2 = std::make_shared<Outcome>();
  auto j2 = MakeJob(good, o2);
  REQUIRE(queue.TryEnqueue(j2).ok());
  CHECK(Await(o2).first.ok());
}

TEST_CASE("a full queue refuses at once and the caller keeps the job") {
  auto gate = std::make_shared<Gate>();
  auto model = GatedModel(gate);
  DeviceQueue queue("cpu", 2);
  std::vector<std::shared_ptr<Outcome>> accepted;
  // One job occupies the worker (held in its forward); two fill the queue.
  for (int i = 0; i < 3; ++i) {
    auto o = std::make_shared<Outcome>();
    auto job = MakeJob(model, o);
    REQUIRE(queue.TryEnqueue(job).ok());
    accepted.push_back(o);
    if (i == 0) REQUIRE(gate->WaitForHeld(1));
  }
  auto o = std::make_shared<Outcome>();
  auto job = MakeJob(model, o);
  Status s = queue.TryEnqueue(job);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK(job != nullptr);  // still the caller's
  gate->Open();
  for (auto& a : accepted) CHECK(Await(a).first.ok());
  CHECK_FALSE(gate->expired());
}

TEST_CASE("a job whose deadline passes in the queue never runs") {
  auto gate = std::make_shared<Gate>();
  auto model = GatedModel(gate);
  DeviceQueue queue("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue.TryEnqueue(j1).ok());
  REQUIRE(gate->WaitForHeld(1));
  auto late = std::make_shared<Outcome>();
  auto j2 = MakeJob(model, late);
  const auto deadline = SteadyClock::now() + 1ms;
  j2->deadline = deadline;
  REQUIRE(queue.TryEnqueue(j2).ok());
  CHECK(WaitUntil([&] { return SteadyClock::now() > deadline; }));  // while the worker is busy with the first
  gate->Open();
  CHECK(Await(first).first.ok());
  auto [status, batch] = Await(late);
  CHECK(status.code() == StatusCode::kDeadlineExceeded);
  CHECK(batch == 0);
  CHECK(model->forwards() == 1);
  CHECK(queue.jobs_dropped() == 1);
  CHECK_FALSE(gate->expired());
}

TEST_CASE("a cancelled job never runs") {
  auto gate = std::make_shared<Gate>();
  auto model = GatedModel(gate);
  DeviceQueue queue("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue.TryEnqueue(j1).ok());
  REQUIRE(gate->WaitForHeld(1));
  auto flag = std::make_shared<std::atomic<bool>>(false);
  auto cancelled = std::make_shared<Outcome>();
  auto j2 = MakeJob(model, cancelled);
  j2->cancelled = flag;
  REQUIRE(queue.TryEnqueue(j2).ok());
  flag->store(true);
  gate->Open();
  CHECK(Await(first).first.ok());
  CHECK(Await(cancelled).first.code() == StatusCode::kCancelled);
  CHECK(model->forwards() == 1);
  CHECK_FALSE(gate->expired());
}

TEST_CASE("compatible waiting jobs merge into one forward, up to max_batch_size rows") {
  auto gate = std::make_shared<Gate>();
  auto model = GatedModel(gate);
  DeviceQueue queue("cpu", 64);
  auto blocker = std::make_shared<Outcome>();
  auto jb = MakeJob(model, blocker);
  REQUIRE(queue.TryEnqueue(jb).ok());
  REQUIRE(gate->WaitForHeld(1));
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
  gate->Open();
  std::vector<int> sizes7, sizes9;
  for (auto& o : k7) sizes7.push_back(Await(o).second);
  for (auto& o : k9) sizes9.push_back(Await(o).second);
  CHECK(Await(blocker).first.ok());
  CHECK(sizes7 == std::vector<int>{4, 4, 4, 4, 1});
  CHECK(sizes9 == std::vector<int>{2, 2});
  CHECK(model->forwards() == 4);  // blocker, 4 of key 7, 2 of key 9, the 5th of key 7
  CHECK_FALSE(gate->expired());
}

TEST_CASE("with a fixed wait a lone job waits for company, up to max_delay_us") {
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  auto a = std::make_shared<Outcome>();
  SECTION("company that comes while it waits joins its forward") {
    // A delay that does not run out during the test: only the company ends the wait.
    const int64_t delay_us = std::chrono::duration_cast<std::chrono::microseconds>(10 * kWaitBound).count();
    auto b = std::make_shared<Outcome>();
    auto ja = MakeJob(model, a, 1, 5, 2, delay_us, true);
    auto jb = MakeJob(model, b, 1, 5, 2, delay_us, true);
    REQUIRE(queue.TryEnqueue(ja).ok());
    // Off the queue but not run: the worker holds it while it waits.
    REQUIRE(WaitUntil([&] { return queue.depth() == 0; }));
    CHECK(model->forwards() == 0);
    REQUIRE(queue.TryEnqueue(jb).ok());
    CHECK(Await(a).second == 2);
    CHECK(Await(b).second == 2);
    CHECK(model->forwards() == 1);
  }
  SECTION("without company it runs alone once its delay has passed") {
    auto ja = MakeJob(model, a, 1, 5, 2, 20000, true);
    REQUIRE(queue.TryEnqueue(ja).ok());
    auto [status, batch] = Await(a);
    CHECK(status.ok());
    CHECK(batch == 1);
    CHECK(a->timing.started - a->timing.enqueued >= 20ms);
    CHECK(model->forwards() == 1);
  }
}

TEST_CASE("by default a lone client's jobs never wait for company") {
  // A delay that does not run out during the test: a job that waited for it would
  // not finish within kWaitBound.
  const int64_t delay_us = std::chrono::duration_cast<std::chrono::microseconds>(10 * kWaitBound).count();
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  for (int i = 0; i < 200; ++i) {  // one request in flight at a time
    auto o = std::make_shared<Outcome>();
    auto j = MakeJob(model, o, 1, 5, 8, delay_us);
    REQUIRE(queue.TryEnqueue(j).ok());
    const auto [status, batch] = Await(o);
    REQUIRE(status.ok());
    CHECK(batch == 1);
  }
  CHECK(queue.batches_run() == 200);
}

TEST_CASE("by default the worker never waits for clients that have left") {
  // Closed-loop clients, then fewer, then one: whatever the policy learnt from the
  // busy phase, no wait runs to the (never reached) max_delay_us.
  const int64_t delay_us = std::chrono::duration_cast<std::chrono::microseconds>(10 * kWaitBound).count();
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  std::atomic<int> failed{0};
  auto client = [&](int requests) {
    for (int i = 0; i < requests; ++i) {
      auto o = std::make_shared<Outcome>();
      auto j = MakeJob(model, o, 1, 5, 4, delay_us);
      if (!queue.TryEnqueue(j).ok()) {
        ++failed;
        return;
      }
      auto result = o->promise.get_future();
      if (result.wait_for(kWaitBound) != std::future_status::ready || !result.get().first.ok()) {
        ++failed;
        return;
      }
    }
  };
  std::vector<std::thread> clients;
  for (int requests : {100, 200, 300, 400}) clients.emplace_back(client, requests);
  for (auto& c : clients) c.join();
  CHECK(failed == 0);
  CHECK(queue.jobs_run() == 1000);
  CHECK(queue.batches_run() <= 1000);
}

TEST_CASE("stopping finishes queued jobs with UNAVAILABLE and refuses new ones") {
  auto gate = std::make_shared<Gate>();
  auto model = GatedModel(gate);
  auto queue = std::make_unique<DeviceQueue>("cpu", 8);
  auto first = std::make_shared<Outcome>();
  auto j1 = MakeJob(model, first);
  REQUIRE(queue->TryEnqueue(j1).ok());
  REQUIRE(gate->WaitForHeld(1));
  std::vector<std::shared_ptr<Outcome>> queued{std::make_shared<Outcome>()};
  auto j2 = MakeJob(model, queued.back());
  REQUIRE(queue->TryEnqueue(j2).ok());
  // Stop() waits for the forward in progress; it has begun once the queue refuses new
  // jobs as stopped. Jobs that the queue took until then are queued jobs too.
  auto stopped = std::async(std::launch::async, [&] { queue->Stop(); });
  const bool refusing = WaitUntil([&] {
    auto o = std::make_shared<Outcome>();
    auto j = MakeJob(model, o);
    const Status s = queue->TryEnqueue(j);
    if (s.ok()) queued.push_back(o);
    return s.code() == StatusCode::kUnavailable;
  });
  gate->Open();
  stopped.get();
  CHECK(refusing);
  CHECK(Await(first).first.ok());
  for (auto& o : queued) CHECK(Await(o).first.code() == StatusCode::kUnavailable);
  CHECK(model->forwards() == 1);
  auto o = std::make_shared<Outcome>();
  auto j3 = MakeJob(model, o);
  CHECK(queue->TryEnqueue(j3).code() == StatusCode::kUnavailable);
  CHECK_FALSE(queue->worker_alive());
  CHECK_FALSE(gate->expired());
}

TEST_CASE("with idle spin on, jobs arriving during and after the spin all run, and Stop still returns") {
  auto model = std::make_shared<FakeModel>("m", "cpu", FakeBehaviour{});
  DeviceQueue queue("cpu", 64);
  const WorkerView worker = ViewWorker(queue, model);
  int jobs = 0;
  JobTiming last;
  auto run_one = [&] {
    auto o = std::make_shared<Outcome>();
    auto job = MakeJob(model, o);
    REQUIRE(queue.TryEnqueue(job).ok());
    CHECK(Await(o).first.ok());
    last = o->timing;
    ++jobs;
  };
  // A spin longer than any wait here; it applies from the next idle spell.
  const auto long_spin = std::chrono::duration_cast<std::chrono::microseconds>(2 * kWaitBound);
  queue.SetIdleSpin(long_spin);
  run_one();
  for (int i = 0; i < 2; ++i) {
    REQUIRE(worker.WaitForSpin());
    run_one();  // lands while the worker polls
  }
  queue.SetIdleSpin(1ms);
  run_one();
  for (int i = 0; i < 2; ++i) {
    // Asleep: with an empty queue, the worker sleeps on its condition variable once its spin is over.
    REQUIRE(WaitUntil([&] { return worker.State() == 'S'; }));
    run_one();  // lands after the spin ended, on a sleeping worker
  }
  CHECK(model->forwards() == jobs);
  CHECK(queue.jobs_run() == static_cast<uint64_t>(jobs) + 1);  // and the job that looked at the worker
  REQUIRE(model->threads().size() == 1);
  CHECK(*model->threads().begin() == queue.worker_thread_id());
  // Stop while the worker polls: it notices the stop at its next poll, before the spin
  // (which began after the last job finished) would have ended.
  queue.SetIdleSpin(long_spin);
  run_one();
  REQUIRE(worker.WaitForSpin());
  queue.Stop();
  CHECK(SteadyClock::now() < last.finished + long_spin);
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
    REQUIRE(Await(o).first.ok());
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
