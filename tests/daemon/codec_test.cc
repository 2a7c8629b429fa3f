#include "daemon/codec.h"

#include <catch2/catch.hpp>

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
  expect_invalid(Floats({2, 0}, 0), "not positive");
  expect_invalid(Floats({-1, 3}, 3), "not positive");
  expect_invalid(Floats({1, 1, 1, 1, 1, 1, 1, 1, 1}, 1), "dimensions");
  expect_invalid(Floats({1001}, 1001), "elements");
  expect_invalid(Floats({2147483647, 2147483647}, 1), "elements");  // no overflow
  expect_invalid(pb::ComputeRequest(), "no tensor");
  auto bad_dtype = Floats({1}, 1);
  bad_dtype.set_dtype(static_cast<pb::DType>(99));
  expect_invalid(bad_dtype, "dtype");
  auto no_shape = Floats({}, 1);
  expect_invalid(no_shape, "shape");
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
