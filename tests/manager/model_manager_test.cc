// ModelManager with fake models: loading, reload semantics (what a new config, a
// changed file or a management call does), warmup and checkpoints before a new version
// serves. No gRPC and no libtorch, so ThreadSanitizer can check it.
#include "manager/model_manager.h"

#include "tests/support/catch.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/manager/model_manager_testing.h"
#include "tests/support/fake_model.h"
#include "tests/support/temp_dir.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

TEST_CASE("models load on the loader thread and become READY with timestamps") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  const auto before = std::chrono::system_clock::now();
  const ApplyResult r = manager.Apply(MakeConfig({MakeModel("a"), MakeModel("b")}));
  CHECK(r.added == std::vector<std::string>{"a", "b"});
  REQUIRE(manager.WaitIdle(10s));
  for (const std::string id : {"a", "b"}) {
    const ModelStatus s = StatusOfModel(manager, id);
    CHECK(s.state == ModelState::kReady);
    CHECK(s.version > 0);
    CHECK(s.parameter_bytes == 1024);
    CHECK(s.state_since >= before);
    CHECK(s.loaded_at >= before);
    CHECK(s.last_error.empty());
  }
  REQUIRE(loader->load_threads().size() == 1);
  CHECK(*loader->load_threads().begin() != std::this_thread::get_id());
  CHECK(Infer(manager, "a", 1.0f).value() == 2.0f);
  CHECK(manager.AllReady());
  CHECK(manager.AllWorkersAlive());
  CHECK(manager.ServingCount() == 2);
  CHECK(manager.Lookup("nope").status().code() == StatusCode::kNotFound);
}

TEST_CASE("reload: added / changed / in place / unchanged / removed models") {
  auto loader = std::make_shared<FakeLoader>();
  FakeBehaviour add10;
  add10.add = 10;
  loader->Set("/fake/b-v2.pt", add10);
  ModelManager manager(loader);
  manager.Apply(MakeConfig({MakeModel("a"), MakeModel("b"), MakeModel("c")}));
  REQUIRE(manager.WaitIdle(10s));
  auto a_before = loader->Last("a");
  const uint64_t b_version = StatusOfModel(manager, "b").version;
  const int loads = loader->loads();

  auto a = MakeModel("a");
  a.timeout_ms = 1234;
  a.batching.max_batch_size = 4;
  const ApplyResult r = manager.Apply(MakeConfig({a, MakeModel("b", "/fake/b-v2.pt"), MakeModel("d")}));
  CHECK(r.updated == std::vector<std::string>{"a"});
  CHECK(r.changed == std::vector<std::string>{"b"});
  CHECK(r.added == std::vector<std::string>{"d"});
  CHECK(r.removed == std::vector<std::string>{"c"});
  REQUIRE(manager.WaitIdle(10s));
  CHECK(loader->loads() == loads + 2);  // b's new version and d

  // In place: same model object, new options on its route.
  CHECK(loader->Last("a") == a_before);
  auto route_a = manager.Lookup("a");
  REQUIRE(route_a.ok());
  CHECK((*route_a)->config.timeout_ms == 1234);
  CHECK((*route_a)->config.batching.max_batch_size == 4);
  // Changed: a new version answers.
  CHECK(StatusOfModel(manager, "b").version > b_version);
  CHECK(Infer(manager, "b", 1.0f).value() == 11.0f);
  // Removed: gone from routing.
  CHECK(manager.Lookup("c").status().code() == StatusCode::kNotFound);
  CHECK_FALSE(manager.GetModel("c").has_value());
  CHECK(Infer(manager, "d", 1.0f).value() == 2.0f);

  // The same config again touches nothing.
  const int loads_after = loader->loads();
  const ApplyResult again = manager.Apply(MakeConfig({a, MakeModel("b", "/fake/b-v2.pt"), MakeModel("d")}));
  CHECK(again.unchanged.size() == 3);
  REQUIRE(manager.WaitIdle(10s));
  CHECK(loader->loads() == loads_after);
}

TEST_CASE("a setting the loader reads (optimize, prepack_linear, blas_threads) loads a new version") {
  const std::string which = GENERATE("optimize", "prepack_linear", "blas_threads");
  INFO(which);
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  auto m = MakeModel("a");
  m.optimize = true;
  manager.Apply(MakeConfig({m}));
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t version = StatusOfModel(manager, "a").version;
  const int loads = loader->loads();
  if (which == "optimize") m.optimize = false;
  if (which == "prepack_linear") m.prepack_linear = true;
  if (which == "blas_threads") m.blas_threads = 1;
  const ApplyResult r = manager.Apply(MakeConfig({m}));
  CHECK(r.changed == std::vector<std::string>{"a"});
  CHECK(r.updated.empty());
  REQUIRE(manager.WaitIdle(10s));
  CHECK(loader->loads() == loads + 1);
  CHECK(StatusOfModel(manager, "a").version > version);
}

TEST_CASE("a failed load keeps the old version serving and a new model that fails is FAILED") {
  auto loader = std::make_shared<FakeLoader>();
  FakeBehaviour broken;
  broken.fail_load = true;
  loader->Set("/fake/broken.pt", broken);
  ModelManager manager(loader);
  manager.Apply(MakeConfig({MakeModel("a")}));
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t version = StatusOfModel(manager, "a").version;

  manager.Apply(MakeConfig({MakeModel("a", "/fake/broken.pt"), MakeModel("n", "/fake/broken.pt")}));
  REQUIRE(manager.WaitIdle(10s));
  const ModelStatus a = StatusOfModel(manager, "a");
  CHECK(a.state == ModelState::kReady);
  CHECK(a.version == version);
  CHECK_THAT(a.last_error, Catch::Contains("fake load failure"));
  CHECK(Infer(manager, "a", 1.0f).value() == 2.0f);

  const ModelStatus n = StatusOfModel(manager, "n");
  CHECK(n.state == ModelState::kFailed);
  CHECK_THAT(n.last_error, Catch::Contains("fake load failure"));
  CHECK(manager.Lookup("n").status().code() == StatusCode::kUnavailable);
  CHECK_FALSE(manager.AllReady());

  // The next reload retries the failed model.
  loader->Set("/fake/broken.pt", FakeBehaviour{});
  const ApplyResult r = manager.Apply(MakeConfig({MakeModel("a"), MakeModel("n", "/fake/broken.pt")}));
  CHECK(r.retried == std::vector<std::string>{"n"});
  REQUIRE(manager.WaitIdle(10s));
  CHECK(StatusOfModel(manager, "n").state == ModelState::kReady);
}

TEST_CASE("warmup runs on the device worker at the model's batch size before it serves, and a failed one fails the load") {
  auto loader = std::make_shared<FakeLoader>();
  FakeBehaviour cold;
  cold.fail_warmup = true;
  loader->Set("/fake/cold.pt", cold);
  ModelManager manager(loader);
  auto warm = MakeModel("w");
  warm.warmup.inputs.push_back(TensorSpec{"", {1, 4}, DType::kFloat32});
  warm.batching.max_batch_size = 8;
  auto plain = MakeModel("p");  // no warmup inputs: nothing to run
  manager.Apply(MakeConfig({warm, plain}));
  REQUIRE(manager.WaitIdle(10s));
  REQUIRE(StatusOfModel(manager, "w").state == ModelState::kReady);
  auto route = manager.Lookup("w");
  REQUIRE(route.ok());
  const auto warmups = loader->Last("w")->warmups();
  REQUIRE(warmups.size() == 1);
  CHECK(warmups[0].thread == (*route)->queue->worker_thread_id());
  CHECK(warmups[0].thread != *loader->load_threads().begin());
  CHECK(warmups[0].max_batch_size == 8);
  CHECK(loader->Last("p")->warmups().empty());
  // The daemon's own work is not counted as clients' jobs.
  CHECK((*route)->queue->jobs_run() == 0);
  CHECK((*route)->queue->batches_run() == 0);

  // A version whose warmup fails never serves; the running one stays.
  const uint64_t version = StatusOfModel(manager, "w").version;
  auto broken = warm;
  broken.path = "/fake/cold.pt";
  manager.Apply(MakeConfig({broken, plain}));
  REQUIRE(manager.WaitIdle(10s));
  const ModelStatus w = StatusOfModel(manager, "w");
  CHECK(w.state == ModelState::kReady);
  CHECK(w.version == version);
  CHECK_THAT(w.last_error, Catch::Contains("fake warmup failure"));
  CHECK(Infer(manager, "w", 1.0f).value() == 2.0f);
}

TEST_CASE("a model file rewritten in place is a change and a touch with the same bytes is not") {
  TempDir dir;
  const std::string path = dir.Write("m.pt", "version one");
  auto loader = std::make_shared<FakeLoader>();
  ModelManager::Hooks hooks;
  hooks.file_digest = [](const std::string& p) -> StatusOr<std::string> {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  ModelManager manager(loader, hooks);
  const Config config = MakeConfig({MakeModel("m", path)});
  manager.Apply(config);
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t v1 = StatusOfModel(manager, "m").version;
  CHECK(StatusOfModel(manager, "m").sha256 == "version one");

  // Same path, new bytes (written to a new file and renamed over, as editors do).
  dir.Write("m.pt.tmp", "version two!");
  fs::rename(dir.path / "m.pt.tmp", path);
  ApplyResult r = manager.Apply(config);
  CHECK(r.file_changed == std::vector<std::string>{"m"});
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t v2 = StatusOfModel(manager, "m").version;
  CHECK(v2 > v1);

  // New mtime, same bytes: checked, not reloaded.
  const int loads = loader->loads();
  fs::last_write_time(path, fs::last_write_time(path) + 5s);
  r = manager.Apply(config);
  CHECK(r.file_changed == std::vector<std::string>{"m"});
  REQUIRE(manager.WaitIdle(10s));
  CHECK(loader->loads() == loads);
  CHECK(StatusOfModel(manager, "m").version == v2);
  // ... and the next reload sees nothing new.
  CHECK(manager.Apply(config).unchanged == std::vector<std::string>{"m"});
}

TEST_CASE("without a digest hook any new fingerprint reloads") {
  TempDir dir;
  const std::string path = dir.Write("m.pt", "one");
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  const Config config = MakeConfig({MakeModel("m", path)});
  manager.Apply(config);
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t v1 = StatusOfModel(manager, "m").version;
  dir.Write("m.pt", "two, longer");
  CHECK(manager.Apply(config).file_changed.size() == 1);
  REQUIRE(manager.WaitIdle(10s));
  CHECK(StatusOfModel(manager, "m").version > v1);
}

TEST_CASE("an unloaded config model stays unloaded on reload until its config changes or it is loaded") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  const Config config = MakeConfig({MakeModel("a")});
  manager.Apply(config);
  REQUIRE(manager.WaitIdle(10s));
  REQUIRE(manager.Unload("a").ok());
  CHECK(manager.Apply(config).unchanged == std::vector<std::string>{"a"});
  REQUIRE(manager.WaitIdle(10s));
  CHECK(StatusOfModel(manager, "a").state == ModelState::kUnloaded);
  CHECK(manager.AllReady());  // an operator's unload is not a fault

  REQUIRE(manager.Load(config.models[0], true).ok());
  REQUIRE(manager.WaitForModel("a", 10s));
  CHECK(StatusOfModel(manager, "a").state == ModelState::kReady);
  CHECK(Infer(manager, "a", 0.0f).value() == 1.0f);
}

TEST_CASE("models loaded by path: id clashes refused / left alone by reloads / gone when unloaded") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  const Config config = MakeConfig({MakeModel("a")});
  manager.Apply(config);
  REQUIRE(manager.WaitIdle(10s));

  CHECK(manager.Load(MakeModel("a", "/fake/x.pt"), false).code() == StatusCode::kAlreadyExists);
  REQUIRE(manager.Load(MakeModel("x", "/fake/x.pt"), false).ok());
  REQUIRE(manager.WaitForModel("x", 10s));
  CHECK_FALSE(StatusOfModel(manager, "x").from_config);
  CHECK(manager.Apply(config).removed.empty());
  CHECK(Infer(manager, "x", 1.0f).value() == 2.0f);
  REQUIRE(manager.Unload("x").ok());
  CHECK_FALSE(manager.GetModel("x").has_value());
  CHECK(manager.Lookup("x").status().code() == StatusCode::kNotFound);
}

TEST_CASE("Reload loads a new version even when nothing changed") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  manager.Apply(MakeConfig({MakeModel("a")}));
  REQUIRE(manager.WaitIdle(10s));
  const uint64_t v1 = StatusOfModel(manager, "a").version;
  REQUIRE(manager.Reload("a").ok());
  REQUIRE(manager.WaitForModel("a", 10s));
  CHECK(StatusOfModel(manager, "a").version > v1);
  CHECK(manager.Reload("nope").code() == StatusCode::kNotFound);
}

namespace {
// Model "t", training on the server with a checkpoint, loaded from a fake whose
// checkpoints are recorded (and fail when `fail_checkpoint`).
void ServeTrainingModel(FakeLoader* loader, ModelManager* manager, bool fail_checkpoint) {
  FakeBehaviour b;
  b.trainable = true;
  b.fail_checkpoint = fail_checkpoint;
  loader->Set("/fake/t.pt", b);
  auto m = MakeModel("t");
  m.training.enabled = true;
  m.training.checkpoint_path = "/fake/t.ckpt";
  manager->Apply(MakeConfig({m}));
  REQUIRE(manager->WaitIdle(10s));
}
}  // namespace

TEST_CASE("a new version of a model training with a checkpoint loads after the serving one wrote it, on its worker") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  ServeTrainingModel(loader.get(), &manager, false);
  auto first = loader->Last("t");
  REQUIRE(first);
  CHECK(first->checkpoints().empty());  // nothing served before it: nothing to save
  REQUIRE(Infer(manager, "t", 1.0f).ok());
  const uint64_t v1 = StatusOfModel(manager, "t").version;

  REQUIRE(manager.Reload("t").ok());
  REQUIRE(manager.WaitIdle(10s));
  CHECK(StatusOfModel(manager, "t").version > v1);
  const auto saves = first->checkpoints();
  REQUIRE(saves.size() == 1);
  CHECK(saves[0].path == "/fake/t.ckpt");
  CHECK(first->threads().count(saves[0].thread) == 1);  // the worker that ran its forwards
  CHECK(saves[0].sequence < loader->last_load_sequence("t"));
}

TEST_CASE("if the serving version's checkpoint fails, the new version is not loaded and the old one keeps serving") {
  auto loader = std::make_shared<FakeLoader>();
  ModelManager manager(loader);
  ServeTrainingModel(loader.get(), &manager, true);
  REQUIRE(Infer(manager, "t", 1.0f).ok());
  const uint64_t v1 = StatusOfModel(manager, "t").version;
  const int loads = loader->loads();

  REQUIRE(manager.Reload("t").ok());
  REQUIRE(manager.WaitIdle(10s));
  const ModelStatus s = StatusOfModel(manager, "t");
  CHECK(s.version == v1);
  CHECK(s.state == ModelState::kReady);
  CHECK_THAT(s.last_error, Catch::Contains("checkpoint") && Catch::Contains("fake checkpoint failure"));
  CHECK(loader->loads() == loads);  // the new version was never loaded
  CHECK(Infer(manager, "t", 1.0f).ok());
}
