#include "daemon/codec.h"

#include "tests/support/catch.h"

#include <zlib.h>

using namespace splitlearnd;
namespace pb = splitlearn::comm;

namespace {

pb::ComputeRequest Floats(std::vector<int32_t> shape, size_t count) {
  pb::ComputeRequest r;
  r.set_data(std::string(count * 4, '\0'));
  for (auto d : shape) r.add_shape(d);
  return r;
}

}  // namespace

TEST_CASE("a legacy request decodes without copying its bytes") {
  auto r = Floats({2, 3}, 6);
  auto d = DecodeCompute(r, Limits{});
  REQUIRE(d.ok());
  REQUIRE(d->request.inputs.size() == 1);
  const auto& t = d->request.inputs[0].tensor;
  CHECK(t.dtype == DType::kFloat32);
  CHECK(t.shape == std::vector<int64_t>{2, 3});
  CHECK(t.data == r.data().data());
  CHECK(d->rows == 2);
  CHECK(d->batch_key != 0);
}

TEST_CASE("malformed tensors are INVALID_ARGUMENT with a message") {
  Limits limits;
  limits.max_elements = 1000;
  auto expect_invalid = [&](const pb::ComputeRequest& r, const char* needle) {
    auto d = DecodeCompute(r, limits);
    REQUIRE_FALSE(d.ok());
    CHECK(d.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(d.status().message(), Catch::Contains(needle));
  };
  expect_invalid(Floats({2, 3}, 5), "bytes");
  expect_invalid(Floats({2, 0}, 1), "bytes");
  expect_invalid(Floats({-1, 3}, 3), "negative");
  expect_invalid(Floats({1, 1, 1, 1, 1, 1, 1, 1, 1}, 1), "dimensions");
  expect_invalid(Floats({1001}, 1001), "elements");
  expect_invalid(Floats({2147483647, 2147483647}, 1), "elements");  // no overflow
  expect_invalid(pb::ComputeRequest(), "no tensor");
  auto bad_dtype = Floats({1}, 1);
  bad_dtype.set_dtype(static_cast<pb::DType>(99));
  expect_invalid(bad_dtype, "dtype");
  expect_invalid(Floats({}, 2), "bytes");  // no shape: a scalar, which has one element
  pb::ComputeRequest neither;
  neither.add_inputs()->set_name("x");
  expect_invalid(neither, "shape is missing");
}

TEST_CASE("scalars and dimensions of size 0 are tensors as PyTorch has them") {
  auto scalar = DecodeCompute(Floats({}, 1), Limits{});
  REQUIRE(scalar.ok());
  CHECK(scalar->request.inputs[0].tensor.shape.empty());
  CHECK(scalar->request.inputs[0].tensor.nbytes == 4);
  CHECK(scalar->rows == 0);
  CHECK(scalar->batch_key == 0);  // nothing to split a merged batch by
  for (std::vector<int32_t> shape : {std::vector<int32_t>{0}, {0, 768}, {3, 0, 5}}) {
    auto empty = DecodeCompute(Floats(shape, 0), Limits{});
    REQUIRE(empty.ok());
    CHECK(empty->request.inputs[0].tensor.nbytes == 0);
    // Zero rows never merge; three rows of nothing merge like any three rows.
    CHECK((empty->batch_key == 0) == (shape[0] == 0));
    CHECK(empty->rows == shape[0]);
  }
}

namespace {

std::string Zlib(const std::string& raw) {
  uLongf n = compressBound(static_cast<uLong>(raw.size()));
  std::string out(n, '\0');
  compress2(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(raw.data()),
            static_cast<uLong>(raw.size()), 6);
  out.resize(n);
  return out;
}

std::string Inflate(const std::string& z, size_t n) {
  std::string out(n, '\0');
  uLongf got = static_cast<uLongf>(n);
  REQUIRE(uncompress(reinterpret_cast<Bytef*>(out.data()), &got, reinterpret_cast<const Bytef*>(z.data()),
                     static_cast<uLong>(z.size())) == Z_OK);
  REQUIRE(got == n);
  return out;
}

}  // namespace

TEST_CASE("the legacy zlib codec: exact inflation in, compressed answers out") {
  std::vector<float> values(100);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f;
  const std::string raw(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  pb::ComputeRequest r;
  r.add_shape(10);
  r.add_shape(10);
  r.set_data(Zlib(raw));
  auto d = DecodeCompute(r, Limits{});
  REQUIRE(d.ok());
  CHECK(d->codec.zlib);
  const HostTensor& t = d->request.inputs[0].tensor;
  REQUIRE(t.nbytes == raw.size());
  CHECK(std::string(static_cast<const char*>(t.data), t.nbytes) == raw);
  CHECK(t.owner != nullptr);  // the inflated bytes outlive the message's

  InferenceResult res;
  res.outputs.push_back(NamedTensor{"out", t});
  res.present_key_values.push_back(KVPair{t, t});
  pb::ComputeResponse resp;
  REQUIRE(EncodeCompute(res, &resp, d->codec).ok());
  CHECK(Inflate(resp.data(), raw.size()) == raw);
  CHECK(Inflate(resp.present_key_values(0).key_data(), raw.size()) == raw);
  pb::ComputeResponse plain;
  REQUIRE(EncodeCompute(res, &plain).ok());
  CHECK(plain.data() == raw);

  auto invalid = [&](const std::string& data, const char* needle) {
    pb::ComputeRequest bad = r;
    bad.set_data(data);
    auto b = DecodeCompute(bad, Limits{});
    REQUIRE_FALSE(b.ok());
    CHECK(b.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(b.status().message(), Catch::Contains(needle));
  };
  invalid(Zlib(raw + "x"), "inflates past the 400 bytes");
  invalid(Zlib(raw.substr(1)), "inflates to 399 bytes");
  invalid(Zlib(raw) + "trailing", "bytes follow the end");
  invalid(Zlib(raw).substr(0, 20), "data");
  invalid(std::string("\x78\x9c") + std::string(30, '\x55'), "data");
  // A stream of a much larger payload stops one byte past what the shape needs.
  invalid(Zlib(std::string(64 << 20, '\0')), "inflates past the 400 bytes");

  pb::BackwardRequest br;
  br.set_forward_id("f");
  br.add_grad_output_shape(100);
  br.set_grad_output_data(Zlib(raw));
  auto bd = DecodeBackward(br, Limits{});
  REQUIRE(bd.ok());
  CHECK(bd->codec.zlib);
  InferenceResult grad;
  grad.outputs.push_back(NamedTensor{"grad_input", bd->request.grad_output});
  pb::BackwardResponse bresp;
  REQUIRE(EncodeBackward(grad, &bresp, bd->codec).ok());
  CHECK(Inflate(bresp.grad_input_data(), raw.size()) == raw);
}

TEST_CASE("dtype sizes are checked per dtype") {
  pb::ComputeRequest r;
  r.set_dtype(pb::DTYPE_INT64);
  r.add_shape(3);
  r.set_data(std::string(24, '\0'));
  REQUIRE(DecodeCompute(r, Limits{}).ok());
  r.set_data(std::string(12, '\0'));
  CHECK(DecodeCompute(r, Limits{}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("batch keys: equal for mergeable requests, zero for cache requests") {
  auto a = Floats({1, 4}, 4);
  auto b = Floats({3, 4}, 12);
  auto c = Floats({1, 5}, 5);
  auto ka = DecodeCompute(a, Limits{})->batch_key;
  CHECK(ka == DecodeCompute(b, Limits{})->batch_key);  // only dim 0 differs
  CHECK(ka != DecodeCompute(c, Limits{})->batch_key);
  a.set_use_cache(true);
  CHECK(DecodeCompute(a, Limits{})->batch_key == 0);
}

TEST_CASE("encoding writes the primary output, extra outputs and the cache") {
  std::vector<float> y{1, 2, 3, 4};
  std::vector<int64_t> ids{7};
  InferenceResult res;
  res.outputs.push_back(NamedTensor{"out", HostTensor{DType::kFloat32, {2, 2}, y.data(), 16, nullptr}});
  res.outputs.push_back(NamedTensor{"ids", HostTensor{DType::kInt64, {1}, ids.data(), 8, nullptr}});
  res.present_key_values.push_back(KVPair{HostTensor{DType::kFloat32, {1, 1, 1, 4}, y.data(), 16, nullptr},
                                          HostTensor{DType::kFloat32, {1, 1, 1, 4}, y.data(), 16, nullptr}});
  pb::ComputeResponse resp;
  REQUIRE(EncodeCompute(res, &resp).ok());
  CHECK(resp.data().size() == 16);
  CHECK(resp.shape_size() == 2);
  REQUIRE(resp.outputs_size() == 1);
  CHECK(resp.outputs(0).name() == "ids");
  CHECK(resp.outputs(0).dtype() == pb::DTYPE_INT64);
  REQUIRE(resp.present_key_values_size() == 1);
  CHECK(resp.present_key_values(0).key_shape_size() == 4);
}
