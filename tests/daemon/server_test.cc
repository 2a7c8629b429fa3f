// The real gRPC server stack (Server, ComputeService, ModelManager, DeviceQueue) on
// loopback with fake models, talked to by real gRPC clients.
#include "daemon/server.h"

#include "tests/support/catch.h"
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <future>
#include <map>
#include <thread>

#include "compute.grpc.pb.h"
#include "tests/support/fake_model.h"
#include "tests/support/wait.h"

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

  // `behaviours`: by model path, set before the first load.
  explicit Harness(Config config, const std::map<std::string, FakeBehaviour>& behaviours = {}) {
    for (const auto& [path, b] : behaviours) loader->Set(path, b);
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
  config.models = {MakeModel("held")};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  config.devices["cpu"].queue_capacity = 1;
  auto gate = std::make_shared<Gate>();
  FakeBehaviour held;
  held.gate = gate;
  Harness h(config, {{"/fake/held.pt", held}});
  auto model = h.loader->Last("held");
  REQUIRE(model);
  auto route = h.manager->Lookup("held");
  REQUIRE(route.ok());

  auto call = [&] {
    grpc::ClientContext ctx;
    pb::ComputeResponse resp;
    return h.Stub()->Compute(&ctx, Request("held", {1, 2}), &resp);
  };
  // The first call occupies the worker (held in its forward), the second fills the
  // queue, the third must be refused.
  std::vector<std::future<grpc::Status>> inflight;
  inflight.push_back(std::async(std::launch::async, call));
  REQUIRE(gate->WaitForHeld(1));
  inflight.push_back(std::async(std::launch::async, call));
  REQUIRE(WaitUntil([&] { return (*route)->queue->depth() == 1; }));
  REQUIRE(model->forwards() == 1);
  const auto s = call();
  CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK_THAT(s.error_message(), Catch::Contains("full"));
  // "At once": the refusal came while the gate still held the worker, not after the
  // queue drained.
  CHECK(inflight[1].wait_for(0ms) == std::future_status::timeout);
  gate->Open();
  for (auto& f : inflight) CHECK(f.get().ok());
  CHECK(model->forwards() == 2);
  CHECK_FALSE(gate->expired());
}

TEST_CASE("a deadline that passes in the queue: DEADLINE_EXCEEDED and no forward") {
  Config config;
  config.models = {MakeModel("m")};
  config.devices["cpu"] = DeviceConfig{"cpu"};
  auto gate = std::make_shared<Gate>();
  FakeBehaviour held;
  held.gate = gate;
  Harness h(config, {{"/fake/m.pt", held}});
  auto model = h.loader->Last("m");
  REQUIRE(model);
  auto route = h.manager->Lookup("m");
  REQUIRE(route.ok());

  auto blocker = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    pb::ComputeResponse resp;
    return h.Stub()->Compute(&ctx, Request("m", {1}), &resp);
  });
  REQUIRE(gate->WaitForHeld(1));
  // Only needs to outlast the call's way into the queue, however slowly this machine
  // runs (sanitizers, load); the test waits it out below. Under a second, because gRPC
  // sends a timeout that short in whole milliseconds (longer ones in coarser units).
  constexpr auto kTimeout = 500ms;
  auto late = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    pb::ComputeResponse resp;
    return h.Stub()->Compute(&ctx, Request("m", {1}), &resp);
  });
  REQUIRE(WaitUntil([&] { return (*route)->queue->depth() == 1; }));
  // The server counts the timeout from the call's arrival, which came before the job
  // was queued, and gRPC's whole milliseconds put its deadline up to 2 ms later: past
  // that, the job's deadline has certainly passed.
  const auto queued = SteadyClock::now();
  CHECK(WaitUntil([&] { return SteadyClock::now() > queued + kTimeout + 2ms; }));
  CHECK(late.get().error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  gate->Open();
  CHECK(blocker.get().ok());
  // The worker drops the expired job when it reaches it: only the blocker ran.
  CHECK(WaitUntil([&] { return (*route)->queue->jobs_dropped() == 1; }));
  CHECK(model->forwards() == 1);
  CHECK_FALSE(gate->expired());
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
