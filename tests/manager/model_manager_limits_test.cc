// ModelManager's per-device limits (max_models, memory_budget_bytes, evict_lru), and
// the state changes and last-use stamps that status and eviction go by.
#include "manager/model_manager.h"

#include "tests/support/catch.h"

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "tests/manager/model_manager_testing.h"
#include "tests/support/fake_model.h"
#include "tests/support/wait.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;

TEST_CASE("max_models refuses a load with a clear error") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  DeviceConfig cpu;
  cpu.max_models = 2;
  manager.Apply(MakeConfig({MakeModel("a"), MakeModel("b"), MakeModel("c")}, cpu));
  REQUIRE(manager.WaitIdle(10s));
  CHECK(StatusOfModel(manager, "a").state == ModelState::kReady);
  CHECK(StatusOfModel(manager, "b").state == ModelState::kReady);
  const ModelStatus c = StatusOfModel(manager, "c");
  CHECK(c.state == ModelState::kFailed);
  CHECK_THAT(c.last_error, Catch::Contains("max_models"));
  CHECK(FakeModel::live() >= 2);
  auto devices = manager.ListDevices();
  REQUIRE(devices.size() == 1);
  CHECK(devices[0].models == 2);
  CHECK(devices[0].max_models == 2);
}

TEST_CASE("a memory budget refuses or evicts the least recently used model") {
  auto loader = std::make_shared<FakeLoader>();
  FakeBehaviour big;
  big.parameter_bytes = 600;
  FakeBehaviour small;
  small.parameter_bytes = 300;
  loader->Set("/fake/big.pt", big);
  loader->Set("/fake/s1.pt", small);
  loader->Set("/fake/s2.pt", small);

  SECTION("refused") {
    DeviceConfig cpu;
    cpu.memory_budget_bytes = 1000;
    ModelManager manager(loader);
    manager.Apply(MakeConfig({MakeModel("s1", "/fake/s1.pt"), MakeModel("s2", "/fake/s2.pt"),
                              MakeModel("big", "/fake/big.pt")}, cpu));
    REQUIRE(manager.WaitIdle(10s));
    const ModelStatus b = StatusOfModel(manager, "big");
    CHECK(b.state == ModelState::kFailed);
    CHECK_THAT(b.last_error, Catch::Contains("memory_budget_bytes"));
    CHECK(manager.ListDevices()[0].memory_used_bytes == 600);
  }
  SECTION("evicted, least recently used first") {
    DeviceConfig cpu;
    cpu.memory_budget_bytes = 1000;
    cpu.evict_lru = true;
    ModelManager manager(loader);
    Config config = MakeConfig({MakeModel("s1", "/fake/s1.pt"), MakeModel("s2", "/fake/s2.pt")}, cpu);
    manager.Apply(config);
    REQUIRE(manager.WaitIdle(10s));
    // Neither was used yet, so their load times stand in: s1's use must come after s2's load.
    const auto s2_loaded = StatusOfModel(manager, "s2").loaded_at;
    REQUIRE(WaitUntil([&] { return std::chrono::system_clock::now() > s2_loaded; }));
    REQUIRE(Infer(manager, "s1", 0.0f).ok());  // s1 is now more recent than s2
    config.models.push_back(MakeModel("big", "/fake/big.pt"));
    manager.Apply(config);
    REQUIRE(manager.WaitIdle(10s));
    CHECK(StatusOfModel(manager, "big").state == ModelState::kReady);
    CHECK(StatusOfModel(manager, "s1").state == ModelState::kReady);
    const ModelStatus s2 = StatusOfModel(manager, "s2");
    CHECK(s2.state == ModelState::kUnloaded);
    CHECK_THAT(s2.last_error, Catch::Contains("evicted"));
    CHECK(manager.Lookup("s2").status().code() == StatusCode::kNotFound);
    CHECK(manager.ListDevices()[0].memory_used_bytes == 900);
  }
  SECTION("larger than the whole budget") {
    DeviceConfig cpu;
    cpu.memory_budget_bytes = 500;
    cpu.evict_lru = true;
    ModelManager manager(loader);
    manager.Apply(MakeConfig({MakeModel("big", "/fake/big.pt")}, cpu));
    REQUIRE(manager.WaitIdle(10s));
    CHECK(StatusOfModel(manager, "big").state == ModelState::kFailed);
  }
}

TEST_CASE("state changes reach the hook and last use is stamped by Lookup but not by Peek") {
  auto loader = std::make_shared<FakeLoader>();
  std::vector<std::string> seen;
  std::mutex mu;
  ModelManager::Hooks hooks;
  hooks.on_state_change = [&](const ModelStatus& s) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(s.id + ":" + ModelStateName(s.state));
  };
  ModelManager manager(loader, hooks);
  manager.Apply(MakeConfig({MakeModel("a")}));
  REQUIRE(manager.WaitIdle(10s));
  const auto before = StatusOfModel(manager, "a").last_used;
  CHECK(before == std::chrono::system_clock::time_point{});  // never used yet
  REQUIRE(manager.Peek("a").ok());
  CHECK(StatusOfModel(manager, "a").last_used == before);  // Peek is not a use
  REQUIRE(manager.Lookup("a").ok());
  CHECK(StatusOfModel(manager, "a").last_used > before);
  manager.Apply(MakeConfig({MakeModel("b")}));
  REQUIRE(manager.WaitIdle(10s));
  std::lock_guard<std::mutex> lock(mu);
  CHECK(seen == std::vector<std::string>{"a:LOADING", "a:READY", "a:UNLOADING", "b:LOADING", "b:READY"});
}
