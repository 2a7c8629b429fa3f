// ModelManager under load from client threads: a version swapped and a model unloaded
// while 8 threads send requests, and shutdown while a route is still held.
#include "manager/model_manager.h"

#include "tests/support/catch.h"

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "tests/manager/model_manager_testing.h"
#include "tests/support/fake_model.h"
#include "tests/support/wait.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;

namespace {

// The device of the tests with 8 client threads: a queue that never refuses them.
DeviceConfig DeepQueue() {
  DeviceConfig cpu;
  cpu.queue_capacity = 4096;
  return cpu;
}

// Client threads that call `body` until stopped; stopped and joined however the test
// ends, so that a failed REQUIRE does not leave them running.
class Clients {
 public:
  Clients(int n, const std::function<void()>& body) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, body] {
        while (!stop_) body();
      });
    }
  }
  ~Clients() { Join(); }
  void Join() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace

TEST_CASE("a swap under load from 8 threads fails no request and answers switch to the new version") {
  const int live_before = FakeModel::live();
  auto loader = std::make_shared<FakeLoader>();
  auto loading = std::make_shared<Gate>();
  FakeBehaviour v2;
  v2.add = 100;
  v2.load_gate = loading;  // held until the old version has served while the new one loads
  loader->Set("/fake/m-v2.pt", v2);
  ModelManager manager(loader);
  manager.Apply(MakeConfig({MakeModel("m")}, DeepQueue()));
  REQUIRE(manager.WaitIdle(10s));

  std::atomic<bool> swapped{false};
  std::atomic<int> ok{0}, failed{0}, ok_after_swap{0}, stale_after_swap{0};
  Clients clients(8, [&] {
    const bool after = swapped.load();
    auto r = Infer(manager, "m", 1.0f);
    if (!r.ok()) {
      ++failed;
    } else {
      ++ok;
      if (after) ++ok_after_swap;
      if (after && *r != 101.0f) ++stale_after_swap;
    }
  });
  REQUIRE(WaitUntil([&] { return ok >= 8; }));
  manager.Apply(MakeConfig({MakeModel("m", "/fake/m-v2.pt")}));
  REQUIRE(loading->WaitForHeld(1));
  const int ok_at_load = ok;
  CHECK(WaitUntil([&] { return ok >= ok_at_load + 8; }));  // the old version serves during the load
  loading->Open();
  REQUIRE(manager.WaitIdle(10s));
  swapped = true;
  CHECK(WaitUntil([&] { return ok_after_swap >= 8; }));
  clients.Join();
  CHECK(failed == 0);
  CHECK(stale_after_swap == 0);
  CHECK_FALSE(loading->expired());
  // The old version's memory goes once its last request is done.
  CHECK(WaitUntil([&] { return manager.ListDraining().empty(); }));
  CHECK(FakeModel::live() == live_before + 1);
}

TEST_CASE("unload while 8 threads hammer: in-flight finish / later NOT_FOUND / memory released") {
  const int live_before = FakeModel::live();
  auto loader = std::make_shared<FakeLoader>();
  auto forwards = std::make_shared<Gate>(true);
  FakeBehaviour gated;
  gated.gate = forwards;
  loader->Set("/fake/u.pt", gated);
  std::vector<std::pair<std::string, uint64_t>> released;
  std::mutex released_mu;
  ModelManager::Hooks hooks;
  hooks.on_version_released = [&](const std::string& id, uint64_t v) {
    std::lock_guard<std::mutex> lock(released_mu);
    released.emplace_back(id, v);
  };
  ModelManager manager(loader, hooks);
  manager.Apply(MakeConfig({MakeModel("u", "/fake/u.pt"), MakeModel("other")}, DeepQueue()));
  REQUIRE(manager.WaitIdle(10s));
  CHECK(FakeModel::live() == live_before + 2);
  const uint64_t version = StatusOfModel(manager, "u").version;

  std::atomic<bool> unloaded{false};
  std::atomic<int> ok{0}, not_found_after{0}, other_errors{0}, ok_started_after{0};
  Clients clients(8, [&] {
    const bool after = unloaded.load();
    auto r = Infer(manager, "u", 1.0f);
    if (r.ok()) {
      ++ok;
      if (after) ++ok_started_after;
    } else if (r.status().code() == StatusCode::kNotFound) {
      if (after) ++not_found_after;
    } else {
      ++other_errors;
    }
  });
  REQUIRE(WaitUntil([&] { return ok >= 8; }));
  // Every client in flight at the unload: one request in the held forward, 7 queued.
  forwards->Close();
  REQUIRE(forwards->WaitForHeld(1));
  REQUIRE(WaitUntil([&] { return manager.ListDevices()[0].queue_depth == 7; }));
  const int ok_before_unload = ok;
  const Status unload = manager.Unload("u");
  unloaded = true;
  forwards->Open();
  CHECK(unload.ok());
  CHECK(WaitUntil([&] { return not_found_after >= 8; }));
  clients.Join();

  CHECK(ok_before_unload > 0);
  CHECK(ok - ok_before_unload == 8);  // the 8 requests in flight at the unload finished fine
  CHECK(other_errors == 0);
  CHECK(ok_started_after == 0);     // nothing looked up after the unload ran
  CHECK(not_found_after > 0);
  CHECK_FALSE(forwards->expired());
  CHECK(manager.Lookup("u").status().code() == StatusCode::kNotFound);
  CHECK(StatusOfModel(manager, "u").state == ModelState::kUnloaded);
  CHECK(manager.Unload("u").code() == StatusCode::kNotFound);

  // Memory: the fake's live count drops back once the last request is gone, and the
  // model is freed on the loader thread (not on a worker or this thread).
  REQUIRE(WaitUntil([&] { return FakeModel::live() == live_before + 1; }));
  CHECK(FakeModel::last_destroyed_on() == *loader->load_threads().begin());
  REQUIRE(WaitUntil([&] { return manager.ListDraining().empty(); }));
  std::lock_guard<std::mutex> lock(released_mu);
  REQUIRE(released.size() == 1);
  CHECK(released[0] == std::make_pair(std::string("u"), version));
  CHECK(Infer(manager, "other", 1.0f).value() == 2.0f);
}

TEST_CASE("shutdown with handles still held does not crash or leak") {
  const int live_before = FakeModel::live();
  std::shared_ptr<const Route> held;
  {
    auto loader = std::make_shared<FakeLoader>();
    ModelManager manager(loader);
    manager.Apply(MakeConfig({MakeModel("a")}));
    REQUIRE(manager.WaitIdle(10s));
    held = manager.Lookup("a").value();
    manager.Shutdown();
    CHECK(manager.Lookup("a").status().code() == StatusCode::kNotFound);
  }
  CHECK(FakeModel::live() == live_before + 1);
  held.reset();
  CHECK(FakeModel::live() == live_before);
}
