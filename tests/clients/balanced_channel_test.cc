// client/balanced_channel against in-process gRPC servers that speak the ComputeService
// and grpc.health.v1 (the default health service, as splitlearnd uses it).
#include "client/balanced_channel.h"

#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include "tests/support/catch.h"
#include <thread>

namespace pb = splitlearn::comm;
using splitlearnd::BalancedChannelOptions;
using splitlearnd::BalancedServiceConfig;
using splitlearnd::BalancedTarget;

namespace {

// Answers Compute with its own name; knows the sessions it opened.
class FakeReplica final : public pb::ComputeService::Service {
 public:
  explicit FakeReplica(std::string name) : name_(std::move(name)) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    SetServing(true);
  }
  ~FakeReplica() override { Stop(); }

  void SetServing(bool serving) {
    server_->GetHealthCheckService()->SetServingStatus("", serving);
    server_->GetHealthCheckService()->SetServingStatus("splitlearn.model/m", serving);
  }
  void Stop() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  int calls() const { return calls_.load(); }

  grpc::Status Compute(grpc::ServerContext*, const pb::ComputeRequest* req, pb::ComputeResponse* resp) override {
    ++calls_;
    if (!req->session_id().empty() && req->session_id() != "s-" + name_) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session");
    }
    resp->set_data(name_);
    resp->set_session_id(req->session_id());
    return grpc::Status::OK;
  }
  grpc::Status OpenSession(grpc::ServerContext*, const pb::OpenSessionRequest* req,
                           pb::OpenSessionResponse* resp) override {
    resp->set_session_id("s-" + name_);
    resp->set_model_id(req->model_id());
    return grpc::Status::OK;
  }

 private:
  std::string name_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<int> calls_{0};
};

std::string Call(pb::ComputeService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  pb::ComputeRequest req;
  pb::ComputeResponse resp;
  const auto s = stub.Compute(&ctx, req, &resp);
  return s.ok() ? resp.data() : "error: " + s.error_message();
}

}  // namespace

TEST_CASE("targets for lists and names") {
  CHECK(*BalancedTarget({"127.0.0.1:5001", "127.0.0.1:5002"}) == "ipv4:127.0.0.1:5001,127.0.0.1:5002");
  CHECK(*BalancedTarget({"[::1]:5001", "[::1]:5002"}) == "ipv6:[::1]:5001,[::1]:5002");
  CHECK(*BalancedTarget({"splitlearnd.ml.svc.cluster.local:50051"}) == "dns:///splitlearnd.ml.svc.cluster.local:50051");
  CHECK(*BalancedTarget({"dns:///a:1"}) == "dns:///a:1");
  CHECK_FALSE(BalancedTarget({}).ok());
  CHECK_FALSE(BalancedTarget({"a:1", "b:2"}).ok());
  CHECK_FALSE(BalancedTarget({"127.0.0.1:1", "[::1]:2"}).ok());
  CHECK_FALSE(BalancedTarget({"127.0.0.1"}).ok());
}

TEST_CASE("service config: round_robin, health checking, retries") {
  BalancedChannelOptions options;
  options.health_service = "splitlearn.model/m";
  const std::string config = BalancedServiceConfig(options);
  CHECK(config.find(R"("loadBalancingConfig":[{"round_robin":{}}])") != std::string::npos);
  CHECK(config.find(R"("healthCheckConfig":{"serviceName":"splitlearn.model/m"})") != std::string::npos);
  CHECK(config.find(R"("retryableStatusCodes":["UNAVAILABLE"])") != std::string::npos);
  options.max_attempts = 1;
  CHECK(BalancedServiceConfig(options).find("retryPolicy") == std::string::npos);
}

TEST_CASE("round_robin over healthy replicas; a NOT_SERVING one gets no calls") {
  FakeReplica a("a"), b("b");
  auto channel = splitlearnd::MakeBalancedChannel({a.endpoint(), b.endpoint()});
  REQUIRE(channel.ok());
  auto stub = pb::ComputeService::NewStub(*channel);
  // Both subchannels become ready after their health checks; bounded wait until both answer.
  bool saw_a = false, saw_b = false;
  for (int i = 0; i < 400 && !(saw_a && saw_b); ++i) {
    const std::string who = Call(*stub);
    saw_a |= who == "a";
    saw_b |= who == "b";
    if (!(saw_a && saw_b)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(saw_a);
  REQUIRE(saw_b);

  b.SetServing(false);
  // The health Watch delivers NOT_SERVING; wait (bounded) until b is out of rotation.
  for (int i = 0; i < 500; ++i) {
    const int before = b.calls();
    for (int j = 0; j < 4; ++j) Call(*stub);
    if (b.calls() == before) break;
  }
  const int b_calls = b.calls(), a_calls = a.calls();
  for (int i = 0; i < 50; ++i) CHECK(Call(*stub) == "a");
  CHECK(b.calls() == b_calls);
  CHECK(a.calls() == a_calls + 50);
}

TEST_CASE("a session is pinned to its replica and its loss is named") {
  FakeReplica a("a"), b("b");
  splitlearnd::ReplicaSet replicas({a.endpoint(), b.endpoint()});
  auto session = replicas.OpenSession("m");
  REQUIRE(session.ok());
  FakeReplica& home = (*session)->endpoint() == a.endpoint() ? a : b;
  FakeReplica& other = &home == &a ? b : a;
  const std::string home_name = &home == &a ? "a" : "b";
  for (int i = 0; i < 20; ++i) {
    auto step = (*session)->Compute(pb::ComputeRequest());
    REQUIRE(step.ok());
    CHECK(step->data() == home_name);
  }
  CHECK(other.calls() == 0);

  home.Stop();
  auto step = (*session)->Compute(pb::ComputeRequest());
  REQUIRE_FALSE(step.ok());
  CHECK(step.status().code() == splitlearnd::StatusCode::kUnavailable);
  CHECK_THAT(step.status().message(), Catch::Contains((*session)->id()) && Catch::Contains(home.endpoint()) &&
                                          Catch::Contains("lost"));
  CHECK(other.calls() == 0);  // never sent elsewhere

  // A new session goes to the replica that is left.
  auto again = replicas.OpenSession("m");
  REQUIRE(again.ok());
  CHECK((*again)->endpoint() == other.endpoint());
}
