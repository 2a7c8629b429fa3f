// The C++ client against an in-process fake ComputeService on 127.0.0.1: what goes
// on the wire, which codes are retried, deadlines, and the statistics.
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include "tests/support/catch.h"
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "client/client.h"

namespace splitlearnd {
namespace {

namespace pb = splitlearn::comm;

// Echoes inputs back. Model "flaky" fails the first `failures` attempts with
// `failure_code`; "bad" answers INVALID_ARGUMENT; "slow" answers only once the call is
// cancelled (its deadline passed).
class FakeService final : public pb::ComputeService::Service {
 public:
  std::atomic<int> attempts{0};
  std::atomic<int> failures{0};
  grpc::StatusCode failure_code = grpc::StatusCode::UNAVAILABLE;

  pb::BackwardRequest last_backward() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_backward_;
  }

  pb::ComputeRequest last_request() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

  grpc::Status Compute(grpc::ServerContext* ctx, const pb::ComputeRequest* req, pb::ComputeResponse* resp) override {
    attempts.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = *req;
    }
    if (req->model_id() == "bad") return {grpc::StatusCode::INVALID_ARGUMENT, "bad shape"};
    if (req->model_id() == "flaky" && failures.fetch_sub(1) > 0) return {failure_code, "try again"};
    if (req->model_id() == "slow") {
      while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return {grpc::StatusCode::CANCELLED, "cancelled"};
    }
    resp->set_data(req->data());
    if (req->has_data_int8_blockwise()) *resp->mutable_data_int8_blockwise() = req->data_int8_blockwise();
    resp->mutable_shape()->CopyFrom(req->shape());
    resp->set_dtype(req->output_dtype() != pb::DTYPE_UNSPECIFIED ? req->output_dtype() : req->dtype());
    if (req->has_request_id()) resp->set_request_id(req->request_id());
    for (const auto& in : req->inputs()) *resp->add_outputs() = in;
    if (req->use_cache()) {
      for (const auto& kv : req->past_key_values()) *resp->add_present_key_values() = kv;
    }
    if (req->training_mode()) resp->set_forward_id(req->forward_id().empty() ? "fw-1" : req->forward_id());
    resp->set_session_id(req->session_id());
    if (!req->session_id().empty()) resp->set_session_tokens(7);
    resp->set_compute_time_ms(1.5f);
    resp->set_queue_time_ms(0.5f);
    return grpc::Status::OK;
  }

  grpc::Status ComputeBackward(grpc::ServerContext*, const pb::BackwardRequest* req,
                               pb::BackwardResponse* resp) override {
    attempts.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_backward_ = *req;
    }
    if (req->forward_id() != "fw-1") return {grpc::StatusCode::NOT_FOUND, "unknown forward_id"};
    if (req->has_grad_output_int8_blockwise() && req->output_encoding() == pb::OUTPUT_ENCODING_INT8_BLOCKWISE) {
      // Quantised in, quantised out: the codes go back as they came.
      resp->set_grad_input_data(req->grad_output_data());
      *resp->mutable_grad_input_int8_blockwise() = req->grad_output_int8_blockwise();
      resp->mutable_grad_input_shape()->CopyFrom(req->grad_output_shape());
      return grpc::Status::OK;
    }
    std::string grad = req->grad_output_data();
    float* v = reinterpret_cast<float*>(grad.data());
    for (size_t i = 0; i < grad.size() / 4; ++i) v[i] *= 2;
    resp->set_grad_input_data(grad);
    resp->mutable_grad_input_shape()->CopyFrom(req->grad_output_shape());
    resp->set_forward_id(req->forward_id());
    return grpc::Status::OK;
  }

  grpc::Status OpenSession(grpc::ServerContext*, const pb::OpenSessionRequest* req,
                           pb::OpenSessionResponse* resp) override {
    resp->set_session_id(req->session_id().empty() ? "s-1" : req->session_id());
    resp->set_model_id(req->model_id());
    resp->set_idle_timeout_s(300);
    return grpc::Status::OK;
  }

  grpc::Status CloseSession(grpc::ServerContext*, const pb::CloseSessionRequest* req,
                            pb::CloseSessionResponse* resp) override {
    if (req->session_id() != "s-1") return {grpc::StatusCode::NOT_FOUND, "unknown session"};
    resp->set_bytes_released(4096);
    return grpc::Status::OK;
  }

  grpc::Status HealthCheck(grpc::ServerContext* ctx, const pb::HealthRequest*, pb::HealthResponse* resp) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      authorization_.clear();
      for (auto [it, end] = ctx->client_metadata().equal_range("authorization"); it != end; ++it) {
        authorization_.emplace_back(it->second.data(), it->second.size());
      }
    }
    resp->set_status("ok");
    return grpc::Status::OK;
  }

  std::vector<std::string> authorization() {
    std::lock_guard<std::mutex> lock(mu_);
    return authorization_;
  }

 private:
  std::mutex mu_;
  pb::ComputeRequest last_;
  pb::BackwardRequest last_backward_;
  std::vector<std::string> authorization_;
};

struct FakeServer {
  FakeService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  FakeServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server);
    REQUIRE(port > 0);
  }
  ~FakeServer() { server->Shutdown(std::chrono::system_clock::now()); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

ClientOptions FastRetries(int attempts) {
  ClientOptions o;
  o.timeout = std::chrono::seconds(20);
  o.retry.max_attempts = attempts;
  o.retry.initial_backoff = std::chrono::milliseconds(1);
  o.retry.max_backoff = std::chrono::milliseconds(5);
  return o;
}

// A loopback port nobody listens on (bound, then closed again).
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

TEST_CASE("a float32 compute goes out as the legacy protocol and comes back", "[client]") {
  FakeServer fake;
  Client client(fake.address(), FastRetries(1));
  const Tensor x = Tensor::FromFloats({2, 3}, {1, 2, 3, 4, 5, 6});
  auto y = client.Compute("m", x);
  REQUIRE(y.ok());
  const auto sent = fake.service.last_request();
  CHECK(sent.dtype() == pb::DTYPE_UNSPECIFIED);  // a legacy server reads float32
  CHECK(sent.model_id() == "m");
  CHECK(std::vector<int32_t>(sent.shape().begin(), sent.shape().end()) == std::vector<int32_t>{2, 3});
  CHECK(y->tensor.dtype == DType::kFloat32);
  CHECK(y->tensor.shape == std::vector<int64_t>{2, 3});
  CHECK(y->tensor.ToFloats() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(y->compute_time_ms == 1.5f);
  CHECK(y->queue_time_ms == 0.5f);
}

TEST_CASE("compute options reach the wire: dtypes, named inputs, cache, session, training, request id", "[client]") {
  FakeServer fake;
  Client client(fake.address(), FastRetries(1));
  Tensor ids;
  ids.dtype = DType::kInt64;
  ids.shape = {1, 2};
  ids.data.assign(16, '\1');
  ComputeOptions o;
  o.output_dtype = DType::kBFloat16;
  o.extra_inputs.push_back({"attention_mask", ids});
  KVEntry kv{Tensor::FromFloats({1, 1, 2, 1}, {1, 2}), Tensor::FromFloats({1, 1, 2, 1}, {3, 4})};
  o.past_key_values.push_back(kv);
  o.use_cache = true;
  o.session_id = "";
  o.training = true;
  o.request_id = 42;
  o.metadata["client"] = "test";
  auto y = client.Compute("m", ids, o);
  REQUIRE(y.ok());
  const auto sent = fake.service.last_request();
  CHECK(sent.dtype() == pb::DTYPE_INT64);
  CHECK(sent.output_dtype() == pb::DTYPE_BFLOAT16);
  REQUIRE(sent.inputs_size() == 1);
  CHECK(sent.inputs(0).name() == "attention_mask");
  CHECK(sent.inputs(0).dtype() == pb::DTYPE_INT64);
  REQUIRE(sent.past_key_values_size() == 1);
  CHECK(sent.past_key_values(0).dtype() == pb::DTYPE_UNSPECIFIED);
  CHECK(sent.use_cache());
  CHECK(sent.training_mode());
  CHECK(sent.request_id() == 42);
  CHECK(sent.metadata().at("client") == "test");

  CHECK(y->tensor.dtype == DType::kBFloat16);
  REQUIRE(y->outputs.size() == 1);
  CHECK(y->outputs[0].name == "attention_mask");
  CHECK(y->outputs[0].tensor.dtype == DType::kInt64);
  REQUIRE(y->present_key_values.size() == 1);
  CHECK(y->present_key_values[0].value.ToFloats() == std::vector<float>{3, 4});
  CHECK(y->forward_id == "fw-1");
  REQUIRE(y->request_id);
  CHECK(*y->request_id == 42);
}

TEST_CASE("int8_block: float32 inputs go int8 blockwise, int8 answers decode to float32", "[client]") {
  FakeServer fake;
  Client client(fake.address(), FastRetries(1));
  const std::vector<float> values = {1.0f, -2.0f, 0.5f, 100.0f, 3.0f};
  Tensor ids;
  ids.dtype = DType::kInt64;
  ids.shape = {1};
  ids.data.assign(8, '\1');
  ComputeOptions o;
  o.int8_block = 2;
  o.extra_inputs.push_back({"bias", Tensor::FromFloats({5}, values)});
  o.extra_inputs.push_back({"ids", ids});
  o.extra_inputs.push_back({"nan", Tensor::FromFloats({1}, {std::nanf("")})});
  o.past_key_values.push_back(KVEntry{Tensor::FromFloats({1, 1, 1, 5}, values), Tensor::FromFloats({1, 1, 1, 5}, values)});
  o.use_cache = true;
  auto y = client.Compute("m", Tensor::FromFloats({5}, values), o);
  REQUIRE(y.ok());
  const auto sent = fake.service.last_request();
  CHECK(sent.output_encoding() == pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  CHECK(sent.output_block_size() == 2);
  REQUIRE(sent.has_data_int8_blockwise());
  CHECK(sent.data().size() == 5);
  CHECK(sent.data_int8_blockwise().block_size() == 2);
  CHECK(sent.data_int8_blockwise().scales_size() == 3);
  REQUIRE(sent.inputs_size() == 3);
  CHECK(sent.inputs(0).has_int8_blockwise());
  CHECK_FALSE(sent.inputs(1).has_int8_blockwise());  // int64 goes plain
  CHECK_FALSE(sent.inputs(2).has_int8_blockwise());  // NaN goes plain
  CHECK(sent.inputs(2).data().size() == 4);

  // The fake echoes the encoded tensors: the client decodes them within the bound.
  auto check = [&](const Tensor& t, const pb::BlockwiseInt8& q) {
    REQUIRE(t.dtype == DType::kFloat32);
    const auto got = t.ToFloats();
    REQUIRE(got.size() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      CHECK(std::fabs(got[i] - values[i]) <= q.scales(static_cast<int>(i / 2)) / 2 * (1 + 1e-6f));
    }
  };
  check(y->tensor, sent.data_int8_blockwise());
  REQUIRE(y->outputs.size() == 3);
  check(y->outputs[0].tensor, sent.inputs(0).int8_blockwise());
  CHECK(y->outputs[1].tensor.dtype == DType::kInt64);
  REQUIRE(sent.past_key_values_size() == 1);
  REQUIRE(sent.past_key_values(0).has_key_int8_blockwise());
  REQUIRE(sent.past_key_values(0).has_value_int8_blockwise());
  CHECK(sent.past_key_values(0).key_data().size() == 5);
  REQUIRE(y->present_key_values.size() == 1);
  check(y->present_key_values[0].key, sent.past_key_values(0).key_int8_blockwise());
  check(y->present_key_values[0].value, sent.past_key_values(0).value_int8_blockwise());

  ComputeOptions plain;
  auto p = client.Compute("m", Tensor::FromFloats({5}, values), plain);
  REQUIRE(p.ok());
  const auto legacy = fake.service.last_request();
  CHECK_FALSE(legacy.has_data_int8_blockwise());
  CHECK(legacy.output_encoding() == pb::OUTPUT_ENCODING_PLAIN);
  CHECK(p->tensor.ToFloats() == values);
}

TEST_CASE("sessions and backward", "[client]") {
  FakeServer fake;
  Client client(fake.address(), FastRetries(1));
  auto session = client.OpenSession("m");
  REQUIRE(session.ok());
  CHECK(session->session_id == "s-1");
  CHECK(session->idle_timeout_s == 300);
  ComputeOptions o;
  o.session_id = session->session_id;
  auto step = client.Compute("m", Tensor::FromFloats({1, 1}, {0.5f}), o);
  REQUIRE(step.ok());
  CHECK(step->session_id == "s-1");
  CHECK(step->session_tokens == 7);
  auto closed = client.CloseSession("m", "s-1");
  REQUIRE(closed.ok());
  CHECK(*closed == 4096);
  CHECK(client.CloseSession("m", "nope").status().code() == StatusCode::kNotFound);

  auto grad = client.Backward("m", "fw-1", Tensor::FromFloats({1, 2}, {1, -3}));
  REQUIRE(grad.ok());
  CHECK(grad->grad_input.ToFloats() == std::vector<float>{2, -6});
  CHECK(grad->forward_id == "fw-1");

  // int8 blockwise both ways, and a named gradient beside the primary one.
  BackwardOptions bo;
  bo.int8_block = 2;
  bo.learning_rate = 0.5f;
  bo.grad_outputs.push_back(TensorEntry{"pooled", Tensor::FromFloats({2}, {0.25f, 8})});
  const std::vector<float> g = {0.5f, -1, 4};
  auto q = client.Backward("m", "fw-1", Tensor::FromFloats({3}, g), bo);
  INFO(q.status().ToString());
  REQUIRE(q.ok());
  const pb::BackwardRequest sent = fake.service.last_backward();
  REQUIRE(sent.has_grad_output_int8_blockwise());
  CHECK(sent.grad_output_int8_blockwise().block_size() == 2);
  CHECK(sent.grad_output_data().size() == 3);
  CHECK(sent.output_encoding() == pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  CHECK(sent.learning_rate() == 0.5f);
  REQUIRE(sent.grad_outputs_size() == 1);
  CHECK(sent.grad_outputs(0).name() == "pooled");
  CHECK(sent.grad_outputs(0).has_int8_blockwise());
  CHECK(sent.grad_outputs(0).data().size() == 2);
  const std::vector<float> back = q->grad_input.ToFloats();
  REQUIRE(back.size() == 3);
  const float scales[] = {sent.grad_output_int8_blockwise().scales(0), sent.grad_output_int8_blockwise().scales(0),
                          sent.grad_output_int8_blockwise().scales(1)};
  for (size_t i = 0; i < 3; ++i) CHECK(std::fabs(back[i] - g[i]) <= scales[i] / 2 * (1 + 1e-6f));
}

TEST_CASE("UNAVAILABLE and RESOURCE_EXHAUSTED are retried until an attempt succeeds", "[client]") {
  FakeServer fake;
  auto code = GENERATE(grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::RESOURCE_EXHAUSTED);
  fake.service.failure_code = code;
  fake.service.failures = 2;
  Client client(fake.address(), FastRetries(4));
  auto y = client.Compute("flaky", Tensor::FromFloats({1}, {1}));
  REQUIRE(y.ok());
  CHECK(fake.service.attempts == 3);
  const ClientStats s = client.Stats();
  CHECK(s.calls == 1);
  CHECK(s.retries == 2);
  CHECK(s.failures == 0);
  CHECK(s.latency_sum_s > 0);
}

TEST_CASE("retries stop after max_attempts", "[client]") {
  FakeServer fake;
  fake.service.failures = 100;
  Client client(fake.address(), FastRetries(3));
  auto y = client.Compute("flaky", Tensor::FromFloats({1}, {1}));
  CHECK(y.status().code() == StatusCode::kUnavailable);
  CHECK(fake.service.attempts == 3);
  CHECK(client.Stats().retries == 2);
  CHECK(client.Stats().failures == 1);

  // A per-call policy overrides the client's.
  CallOptions once;
  once.retry = RetryPolicy{};
  once.retry->max_attempts = 1;
  ComputeOptions none;
  CHECK(client.Compute("flaky", Tensor::FromFloats({1}, {1}), none, once).status().code() == StatusCode::kUnavailable);
  CHECK(fake.service.attempts == 4);
  CHECK(client.Stats().calls == 2);
  client.ResetStats();
  CHECK(client.Stats().calls == 0);
}

TEST_CASE("other codes are not retried", "[client]") {
  FakeServer fake;
  Client client(fake.address(), FastRetries(5));
  auto y = client.Compute("bad", Tensor::FromFloats({1}, {1}));
  CHECK(y.status().code() == StatusCode::kInvalidArgument);
  CHECK(y.status().message() == "bad shape");
  CHECK(fake.service.attempts == 1);
  CHECK(client.Stats().retries == 0);
  CHECK(client.Backward("m", "unknown", Tensor::FromFloats({1}, {1})).status().code() == StatusCode::kNotFound);
  CHECK(fake.service.attempts == 2);
}

TEST_CASE("the deadline ends a call and is not retried", "[client]") {
  FakeServer fake;
  ClientOptions o = FastRetries(5);
  o.timeout = std::chrono::milliseconds(200);
  Client client(fake.address(), o);
  auto y = client.Compute("slow", Tensor::FromFloats({1}, {1}));
  CHECK(y.status().code() == StatusCode::kDeadlineExceeded);
  CHECK(client.Stats().retries == 0);
}

TEST_CASE("no retry is started when its wait would pass the deadline", "[client]") {
  FakeServer fake;
  fake.service.failures = 100;
  ClientOptions o;
  o.timeout = std::chrono::seconds(2);
  o.retry.max_attempts = 5;
  o.retry.initial_backoff = std::chrono::seconds(60);
  o.retry.max_backoff = std::chrono::seconds(60);
  Client client(fake.address(), o);
  CHECK(client.Compute("flaky", Tensor::FromFloats({1}, {1})).status().code() == StatusCode::kUnavailable);
  CHECK(fake.service.attempts == 1);
}

TEST_CASE("a daemon that is not there: UNAVAILABLE after every attempt", "[client]") {
  Client client("127.0.0.1:" + std::to_string(UnusedPort()), FastRetries(3));
  auto h = client.Health();
  CHECK(h.status().code() == StatusCode::kUnavailable);
  CHECK(client.Stats().retries == 2);
  CHECK(client.Stats().failures == 1);
}

TEST_CASE("backoff grows by the multiplier up to the cap", "[client]") {
  RetryPolicy p;
  p.initial_backoff = std::chrono::milliseconds(100);
  p.multiplier = 2;
  p.max_backoff = std::chrono::milliseconds(500);
  CHECK(BackoffBeforeJitter(p, 1).count() == 100);
  CHECK(BackoffBeforeJitter(p, 2).count() == 200);
  CHECK(BackoffBeforeJitter(p, 3).count() == 400);
  CHECK(BackoffBeforeJitter(p, 4).count() == 500);
  CHECK(IsRetryable(StatusCode::kUnavailable));
  CHECK(IsRetryable(StatusCode::kResourceExhausted));
  CHECK_FALSE(IsRetryable(StatusCode::kDeadlineExceeded));
  CHECK_FALSE(IsRetryable(StatusCode::kInternal));
}

TEST_CASE("channel arguments carry message sizes and keepalive", "[client]") {
  ClientOptions o;
  o.max_message_bytes = 100 * 1024 * 1024;
  o.keepalive_time = std::chrono::seconds(30);
  const grpc::ChannelArguments args = DefaultChannelArguments(o);  // owns what c points into
  grpc_channel_args c = args.c_channel_args();
  auto find = [&](const char* key) -> int {
    for (size_t i = 0; i < c.num_args; ++i) {
      if (std::string(c.args[i].key) == key) return c.args[i].value.integer;
    }
    return -1;
  };
  CHECK(find(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH) == 100 * 1024 * 1024);
  CHECK(find(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH) == 100 * 1024 * 1024);
  CHECK(find(GRPC_ARG_KEEPALIVE_TIME_MS) == 30000);
  CHECK(find(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS) == 5000);
}

TEST_CASE("a token goes with every call as authorization: Bearer", "[client]") {
  FakeServer fake;
  ClientOptions options = FastRetries(1);
  Client plain(fake.address(), options);
  REQUIRE(plain.Health().ok());
  CHECK(fake.service.authorization().empty());
  options.token = "t0ken-value";
  Client client(fake.address(), options);
  REQUIRE(client.Health().ok());
  CHECK(fake.service.authorization() == std::vector<std::string>{"Bearer t0ken-value"});
}

TEST_CASE("tokens and TLS files are read from files or the environment", "[client]") {
  char tmpl[] = "/tmp/slclientXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  auto write = [&](const std::string& name, const std::string& text) {
    std::FILE* f = std::fopen((dir + "/" + name).c_str(), "w");
    REQUIRE(f);
    std::fputs(text.c_str(), f);
    std::fclose(f);
    return dir + "/" + name;
  };
  auto token = ReadToken(write("tok", "  abc123\n"));
  REQUIRE(token.ok());
  CHECK(*token == "abc123");
  CHECK_FALSE(ReadToken(write("two", "abc def\n")).ok());
  CHECK_FALSE(ReadToken(write("empty", "\n")).ok());
  CHECK(ReadToken(dir + "/missing").status().code() == StatusCode::kNotFound);
  setenv("SPLITLEARND_TOKEN", "from-env", 1);
  CHECK(ReadToken("").value() == "from-env");
  unsetenv("SPLITLEARND_TOKEN");
  CHECK(ReadToken("").value().empty());

  ClientOptions options;
  REQUIRE(LoadTlsFiles(write("ca.pem", "CA"), "", "", &options).ok());
  CHECK(options.tls);
  CHECK(options.tls_root_certificates == "CA");
  CHECK(options.tls_cert_chain.empty());
  CHECK(LoadTlsFiles("", write("c.pem", "C"), "", &options).code() == StatusCode::kInvalidArgument);
  REQUIRE(LoadTlsFiles("", dir + "/c.pem", write("k.pem", "K"), &options).ok());
  CHECK(options.tls_cert_chain == "C");
  CHECK(options.tls_private_key == "K");
  CHECK(LoadTlsFiles(dir + "/nope.pem", "", "", &options).code() == StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

}  // namespace splitlearnd
