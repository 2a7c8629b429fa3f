// The real gRPC server stack (Server, ComputeService, ModelManager, DeviceQueue) on
// loopback with fake models, talked to by real gRPC clients.
#include "daemon/server.h"

#include "tests/support/catch.h"
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <future>
#include <thread>

#include "compute.grpc.pb.h"
#include "tests/fakes/fake_model.h"

using namespace splitlearnd;
using namespace splitlearnd::testing;
using namespace std::chrono_literals;
namespace pb = splitlearn::comm;

namespace {

ModelConfig MakeModel(const std::string& id, bool is_default = false) {
  ModelConfig m;
  m.id = id;
  m.path = "/fake/" + id + ".pt";
  m.is_default = is_default;
  return m;
}

struct Harness {
  std::shared_ptr<FakeLoader> loader = std::make_shared<FakeLoader>();
  std::unique_ptr<ModelManager> manager;
  std::unique_ptr<Server> server;

  explicit Harness(Config config) {
    manager = std::make_unique<ModelManager>(loader);
    server = std::make_unique<Server>(manager.get(), ServerOptions{});
    manager->Apply(config);
    REQUIRE(manager->WaitIdle(10s));
    REQUIRE(server->Start().ok());
  }
  ~Harness() {
    server->Shutdown();
    manager->Shutdown();
  }
  std::unique_ptr<pb::ComputeService::Stub> Stub() const {
    return pb::ComputeService::NewStub(
        grpc::CreateChannel(server->bound_address(), grpc::InsecureChannelCredentials()));
  }
};

pb::ComputeRequest Request(const std::string& model, const std::vector<float>& values) {
  pb::ComputeRequest r;
  r.set_model_id(model);
  r.set_data(values.data(), values.size() * sizeof(float));
  r.add_shape(1);
  r.add_shape(static_cast<int32_t>(values.size()));
  return r;
}

std::vector<float> Floats(const std::string& bytes) {
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

}  // namespace

TEST_CASE("32 concurrent clients: one worker thread per device, every answer correct") {
  Config config;
  config.models = {MakeModel("a"), MakeModel("b")};
  config.models[1].device = "cuda:7";  // a second device (the fake does not care)
  config.devices["cpu"] = DeviceConfig{"cpu"};
  config.devices["cuda:7"] = DeviceConfig{"cuda:7"};
  FakeBehaviour add2;
  add2.add = 2.0f;
  Harness h(config);
  h.loader->Set("/fake/b.pt", add2);  // (set after load: b adds 1, like a)

  constexpr int kClients = 32, kRequests = 25;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = h.Stub();
      for (int i = 0; i < kRequests; ++i) {
        const std::vector<float> in{float(c), float(i), float(c * i)};
        const std::string model = (c + i) % 2 ? "a" : "b";
        grpc::ClientContext ctx;
        pb::ComputeResponse resp;
        auto s = stub->Compute(&ctx, Request(model, in), &resp);
        if (!s.ok()) {
          ++failed;
          continue;
        }
        const auto out = Floats(resp.data());
        if (out != std::vector<float>{in[0] + 1, in[1] + 1, in[2] + 1}) ++wrong;
      }
    });
  }
  for (auto& t : clients) t.join();
  CHECK(failed == 0);
  CHECK(wrong == 0);

  auto a = h.loader->Last("a");
  auto b = h.loader->Last("b");
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->rows_run() + b->rows_run() == kClients * kRequests);
  REQUIRE(a->threads().size() == 1);
  REQUIRE(b->threads().size() == 1);
  CHECK(*a->threads().begin() != *b->threads().begin());  // one worker each, distinct devices
  auto route_a = h.manager->Lookup("a");
  REQUIRE(route_a.ok());
  CHECK(*a->threads().begin() == (*route_a)->queue->worker_thread_id());
}

TEST_CASE("a full queue answers RESOURCE_EXHAUSTED at once") {
  Config config;
  config.models = {MakeModel("slow")};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  config.devices["cpu"].queue_capacity = 1;
  Harness h([&] { return config; }());
  // The loader made the model before we could set a delay; reload with a slow one.
  FakeBehaviour slow;
  slow.delay = 500ms;
  h.loader->Set("/fake/slow2.pt", slow);
  config.models[0].path = "/fake/slow2.pt";
  h.manager->Apply(config);
  REQUIRE(h.manager->WaitIdle(10s));

  auto stub = h.Stub();
  auto model = h.loader->Last("slow");
  REQUIRE(model);
  auto route = h.manager->Lookup("slow");
  REQUIRE(route.ok());
  // First call occupies the worker, second fills the queue, third must be refused. Each
  // step waits for the previous one to land (not a fixed sleep: sanitizers are slow).
  std::vector<std::future<grpc::Status>> inflight;
  for (int i = 0; i < 2; ++i) {
    inflight.push_back(std::async(std::launch::async, [&] {
      grpc::ClientContext ctx;
      pb::ComputeResponse resp;
      return h.Stub()->Compute(&ctx, Request("slow", {1, 2}), &resp);
    }));
    for (int k = 0; k < 1000; ++k) {
      if (i == 0 ? model->forwards() >= 1 : (*route)->queue->depth() >= 1) break;
      std::this_thread::sleep_for(5ms);
    }
  }
  REQUIRE(model->forwards() == 1);
  REQUIRE((*route)->queue->depth() == 1);
  grpc::ClientContext ctx;
  pb::ComputeResponse resp;
  auto s = stub->Compute(&ctx, Request("slow", {1, 2}), &resp);
  CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK_THAT(s.error_message(), Catch::Contains("full"));
  // "At once": the refusal came while the queued call (two 500 ms forwards away
  // from done) was still waiting, not after the queue drained.
  CHECK(inflight[1].wait_for(0ms) == std::future_status::timeout);
  for (auto& f : inflight) CHECK(f.get().ok());
}

TEST_CASE("a deadline that passes in the queue: DEADLINE_EXCEEDED and no forward") {
  Config config;
  config.models = {MakeModel("m")};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  FakeBehaviour slow;
  slow.delay = 400ms;
  Harness h(config);
  h.loader->Set("/fake/m2.pt", slow);
  config.models[0].path = "/fake/m2.pt";
  h.manager->Apply(config);
  REQUIRE(h.manager->WaitIdle(10s));
  auto model = h.loader->Last("m");
  REQUIRE(model);

  auto blocker = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    pb::ComputeResponse resp;
    return h.Stub()->Compute(&ctx, Request("m", {1}), &resp);
  });
  // Wait until the blocker's forward has started (counted on entry), so that the next
  // call queues behind it however slowly this machine runs (sanitizers, load).
  for (int i = 0; i < 1000 && model->forwards() == 0; ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(model->forwards() == 1);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 100ms);
  pb::ComputeResponse resp;
  auto s = h.Stub()->Compute(&ctx, Request("m", {1}), &resp);
  CHECK(s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  CHECK(blocker.get().ok());
  // Let the worker reach the expired job (it drops it), then count forwards: only the
  // blocker ran.
  auto route = h.manager->Lookup("m");
  REQUIRE(route.ok());
  for (int i = 0; i < 1000 && (*route)->queue->jobs_dropped() == 0; ++i) std::this_thread::sleep_for(10ms);
  CHECK((*route)->queue->jobs_dropped() == 1);
  CHECK(model->forwards() == 1);
}

TEST_CASE("statuses: unknown model, empty default, model failure, draining") {
  Config config;
  config.models = {MakeModel("a"), MakeModel("b")};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  Harness h(config);
  auto stub = h.Stub();
  auto call = [&](const pb::ComputeRequest& r) {
    grpc::ClientContext ctx;
    pb::ComputeResponse resp;
    return stub->Compute(&ctx, r, &resp);
  };
  CHECK(call(Request("nope", {1})).error_code() == grpc::StatusCode::NOT_FOUND);
  // Two models and none marked default: an empty model_id cannot be routed.
  CHECK(call(Request("", {1})).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(call(Request("a", {1})).ok());

  h.server->BeginDrain();
  auto s = call(Request("a", {1}));
  CHECK(s.error_code() == grpc::StatusCode::UNAVAILABLE);
}

TEST_CASE("an empty model_id goes to the default model") {
  Config config;
  config.models = {MakeModel("a"), MakeModel("b", true)};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  Harness h(config);
  grpc::ClientContext ctx;
  pb::ComputeResponse resp;
  auto s = h.Stub()->Compute(&ctx, Request("", {5}), &resp);
  REQUIRE(s.ok());
  CHECK(h.loader->Last("b")->forwards() == 1);
  CHECK(h.loader->Last("a")->forwards() == 0);
}
