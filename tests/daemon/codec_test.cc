#include "daemon/codec.h"

#include <cmath>

#include "common/blockwise_int8.h"

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

namespace {

// `values` as an int8 blockwise request's primary input of shape {count}.
pb::ComputeRequest Int8Request(const std::vector<float>& values, int block) {
  auto enc = EncodeBlockwiseInt8(values.data(), values.size(), static_cast<size_t>(block));
  REQUIRE(enc.ok());
  pb::ComputeRequest r;
  r.set_data(std::string(enc->codes.begin(), enc->codes.end()));
  r.add_shape(static_cast<int32_t>(values.size()));
  r.mutable_data_int8_blockwise()->set_block_size(block);
  r.mutable_data_int8_blockwise()->mutable_scales()->Add(enc->scales.begin(), enc->scales.end());
  return r;
}

std::vector<float> AsFloats(const HostTensor& t) {
  REQUIRE(t.dtype == DType::kFloat32);
  const auto* p = static_cast<const float*>(t.data);
  return std::vector<float>(p, p + t.nbytes / sizeof(float));
}

}  // namespace

TEST_CASE("int8 blockwise inputs decode to float32 within the stated bound") {
  const std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -7.0f, 0.0f};
  auto r = Int8Request(x, 3);
  pb::NamedTensor* named = r.add_inputs();
  named->set_name("mask");
  named->set_data(r.data());
  named->add_shape(7);
  *named->mutable_int8_blockwise() = r.data_int8_blockwise();
  auto d = DecodeCompute(r, Limits{});
  REQUIRE(d.ok());
  REQUIRE(d->request.inputs.size() == 2);
  CHECK_FALSE(d->codec.zlib);
  CHECK(d->codec.int8_block == 0);  // inputs int8 do not make the answer int8
  for (const auto& in : d->request.inputs) {
    CHECK(in.tensor.shape == std::vector<int64_t>{7});
    CHECK(in.tensor.owner != nullptr);
    auto y = AsFloats(in.tensor);
    REQUIRE(y.size() == x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const float scale = r.data_int8_blockwise().scales(static_cast<int>(i / 3));
      CHECK(std::fabs(y[i] - x[i]) <= scale / 2 * (1 + 1e-6f));
    }
  }
}

TEST_CASE("malformed int8 blockwise inputs are INVALID_ARGUMENT") {
  const std::vector<float> x = {1, 2, 3, 4, 5};
  auto expect_invalid = [](const pb::ComputeRequest& r, const char* needle) {
    auto d = DecodeCompute(r, Limits{});
    REQUIRE_FALSE(d.ok());
    CHECK(d.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(d.status().message(), Catch::Contains(needle));
  };
  REQUIRE(DecodeCompute(Int8Request(x, 2), Limits{}).ok());
  auto few_scales = Int8Request(x, 2);
  few_scales.mutable_data_int8_blockwise()->mutable_scales()->RemoveLast();
  expect_invalid(few_scales, "scales");
  auto many_scales = Int8Request(x, 2);
  many_scales.mutable_data_int8_blockwise()->add_scales(1.0f);
  expect_invalid(many_scales, "scales");
  auto few_bytes = Int8Request(x, 2);
  few_bytes.mutable_data()->pop_back();
  expect_invalid(few_bytes, "bytes");
  auto block0 = Int8Request(x, 2);
  block0.mutable_data_int8_blockwise()->set_block_size(0);
  expect_invalid(block0, "block_size");
  auto negative = Int8Request(x, 2);
  negative.mutable_data_int8_blockwise()->set_scales(0, -1.0f);
  expect_invalid(negative, "scale");
  auto nan = Int8Request(x, 2);
  nan.mutable_data_int8_blockwise()->set_scales(1, std::nanf(""));
  expect_invalid(nan, "scale");
  auto half = Int8Request(x, 2);
  half.set_dtype(pb::DTYPE_FLOAT16);
  expect_invalid(half, "float32");
  auto named = Int8Request(x, 2);
  auto* in = named.add_inputs();
  in->set_name("b");
  in->set_data(std::string(5, '\0'));
  in->add_shape(5);
  in->mutable_int8_blockwise()->set_block_size(2);
  in->mutable_int8_blockwise()->add_scales(1.0f);  // needs 3
  expect_invalid(named, "input 'b'");
  auto bad_encoding = Int8Request(x, 2);
  bad_encoding.set_output_encoding(static_cast<pb::OutputEncoding>(7));
  expect_invalid(bad_encoding, "output_encoding");
  auto block_without = Int8Request(x, 2);
  block_without.set_output_block_size(8);
  expect_invalid(block_without, "output_block_size");
  auto half_answer = Int8Request(x, 2);
  half_answer.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  half_answer.set_output_dtype(pb::DTYPE_FLOAT16);
  expect_invalid(half_answer, "output_dtype");
}

TEST_CASE("int8 blockwise answers only when asked: float32 outputs quantised, others plain") {
  auto r = Floats({4}, 4);
  auto plain = DecodeCompute(r, Limits{});
  REQUIRE(plain.ok());
  CHECK(plain->codec.int8_block == 0);
  r.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  auto dflt = DecodeCompute(r, Limits{});
  REQUIRE(dflt.ok());
  CHECK(dflt->codec.int8_block == kDefaultInt8Block);
  r.set_output_block_size(3);
  auto d = DecodeCompute(r, Limits{});
  REQUIRE(d.ok());
  REQUIRE(d->codec.int8_block == 3);

  std::vector<float> y{1.0f, -2.0f, 30.0f, 0.125f, 4.0f};
  std::vector<float> hidden{0.5f, std::nanf(""), 1.0f};
  std::vector<int64_t> ids{7};
  InferenceResult res;
  res.outputs.push_back(NamedTensor{"out", HostTensor{DType::kFloat32, {5}, y.data(), 20, nullptr}});
  res.outputs.push_back(NamedTensor{"ids", HostTensor{DType::kInt64, {1}, ids.data(), 8, nullptr}});
  res.outputs.push_back(NamedTensor{"hidden", HostTensor{DType::kFloat32, {3}, hidden.data(), 12, nullptr}});
  res.outputs.push_back(NamedTensor{"extra", HostTensor{DType::kFloat32, {5}, y.data(), 20, nullptr}});

  pb::ComputeResponse legacy;
  REQUIRE(EncodeCompute(res, &legacy, plain->codec).ok());
  CHECK_FALSE(legacy.has_data_int8_blockwise());
  CHECK(legacy.data().size() == 20);
  for (const auto& o : legacy.outputs()) CHECK_FALSE(o.has_int8_blockwise());

  pb::ComputeResponse resp;
  REQUIRE(EncodeCompute(res, &resp, d->codec).ok());
  REQUIRE(resp.has_data_int8_blockwise());
  CHECK(resp.dtype() == pb::DTYPE_FLOAT32);
  CHECK(resp.data().size() == 5);
  const auto& q = resp.data_int8_blockwise();
  CHECK(q.block_size() == 3);
  REQUIRE(q.scales_size() == 2);
  std::vector<float> back;
  REQUIRE(DecodeBlockwiseInt8(resp.data(), q.scales().data(), 2, 3, 5, "out", &back).ok());
  for (size_t i = 0; i < y.size(); ++i) CHECK(std::fabs(back[i] - y[i]) <= q.scales(static_cast<int>(i / 3)) / 2 * (1 + 1e-6f));
  REQUIRE(resp.outputs_size() == 3);
  CHECK_FALSE(resp.outputs(0).has_int8_blockwise());  // int64: plain
  CHECK(resp.outputs(0).data().size() == 8);
  CHECK_FALSE(resp.outputs(1).has_int8_blockwise());  // NaN: plain, so the client sees it
  CHECK(resp.outputs(1).data().size() == 12);
  REQUIRE(resp.outputs(2).has_int8_blockwise());
  CHECK(resp.outputs(2).data() == resp.data());
  CHECK(resp.outputs(2).int8_blockwise().scales_size() == 2);
}

TEST_CASE("int8 blockwise KV caches: decoded in requests, encoded in answers when asked") {
  const std::vector<float> k = {0.5f, -1.0f, 2.0f, 4.0f}, v = {1.0f, 1.0f, -3.0f, 0.0f};
  auto r = Floats({1, 4}, 4);
  r.set_use_cache(true);
  r.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  r.set_output_block_size(2);
  auto* e = r.add_past_key_values();
  for (int d : {1, 1, 1, 4}) {
    e->add_key_shape(d);
    e->add_value_shape(d);
  }
  auto ek = EncodeBlockwiseInt8(k.data(), k.size(), 2);
  REQUIRE(ek.ok());
  e->set_key_data(std::string(ek->codes.begin(), ek->codes.end()));
  e->mutable_key_int8_blockwise()->set_block_size(2);
  e->mutable_key_int8_blockwise()->mutable_scales()->Add(ek->scales.begin(), ek->scales.end());
  e->set_value_data(std::string(reinterpret_cast<const char*>(v.data()), 16));  // value plain float32
  auto d = DecodeCompute(r, Limits{});
  REQUIRE(d.ok());
  REQUIRE(d->request.past_key_values.size() == 1);
  auto key = AsFloats(d->request.past_key_values[0].key);
  for (size_t i = 0; i < k.size(); ++i) CHECK(std::fabs(key[i] - k[i]) <= ek->scales[i / 2] / 2 * (1 + 1e-6f));
  CHECK(AsFloats(d->request.past_key_values[0].value) == v);

  auto bad = r;
  bad.mutable_past_key_values(0)->mutable_key_int8_blockwise()->add_scales(1.0f);
  auto b = DecodeCompute(bad, Limits{});
  REQUIRE_FALSE(b.ok());
  CHECK(b.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(b.status().message(), Catch::Contains("past_key_values[0].key"));

  InferenceResult res;
  const HostTensor kt{DType::kFloat32, {1, 1, 1, 4}, k.data(), 16, nullptr};
  res.outputs.push_back(NamedTensor{"", kt});
  res.present_key_values.push_back(KVPair{kt, kt});
  pb::ComputeResponse resp;
  REQUIRE(EncodeCompute(res, &resp, d->codec).ok());
  REQUIRE(resp.present_key_values_size() == 1);
  const auto& pe = resp.present_key_values(0);
  REQUIRE(pe.has_key_int8_blockwise());
  REQUIRE(pe.has_value_int8_blockwise());
  CHECK(pe.key_data().size() == 4);
  CHECK(pe.key_int8_blockwise().scales_size() == 2);
  pb::ComputeResponse plain;
  REQUIRE(EncodeCompute(res, &plain).ok());
  CHECK_FALSE(plain.present_key_values(0).has_key_int8_blockwise());
  CHECK(plain.present_key_values(0).key_data().size() == 16);
}

TEST_CASE("int8 blockwise grad_output and grad_input") {
  const std::vector<float> g = {0.25f, -0.5f, 8.0f};
  pb::BackwardRequest req;
  req.set_forward_id("f");
  req.add_grad_output_shape(3);
  auto eg = EncodeBlockwiseInt8(g.data(), g.size(), 2);
  REQUIRE(eg.ok());
  req.set_grad_output_data(std::string(eg->codes.begin(), eg->codes.end()));
  req.mutable_grad_output_int8_blockwise()->set_block_size(2);
  req.mutable_grad_output_int8_blockwise()->mutable_scales()->Add(eg->scales.begin(), eg->scales.end());
  auto plain_answer = DecodeBackward(req, Limits{});
  REQUIRE(plain_answer.ok());
  CHECK(plain_answer->codec.int8_block == 0);
  auto got = AsFloats(plain_answer->request.grad_output);
  for (size_t i = 0; i < g.size(); ++i) CHECK(std::fabs(got[i] - g[i]) <= eg->scales[i / 2] / 2 * (1 + 1e-6f));

  req.set_output_encoding(pb::OUTPUT_ENCODING_INT8_BLOCKWISE);
  auto d = DecodeBackward(req, Limits{});
  REQUIRE(d.ok());
  CHECK(d->codec.int8_block == kDefaultInt8Block);
  InferenceResult res;
  res.outputs.push_back(NamedTensor{"grad_input", HostTensor{DType::kFloat32, {3}, g.data(), 12, nullptr}});
  pb::BackwardResponse resp;
  REQUIRE(EncodeBackward(res, &resp, d->codec).ok());
  REQUIRE(resp.has_grad_input_int8_blockwise());
  CHECK(resp.grad_input_data().size() == 3);
  CHECK(resp.grad_input_int8_blockwise().scales_size() == 1);
  pb::BackwardResponse legacy;
  REQUIRE(EncodeBackward(res, &legacy, plain_answer->codec).ok());
  CHECK_FALSE(legacy.has_grad_input_int8_blockwise());
  CHECK(legacy.grad_input_data().size() == 12);

  auto bad = req;
  bad.mutable_grad_output_data()->pop_back();
  CHECK(DecodeBackward(bad, Limits{}).status().code() == StatusCode::kInvalidArgument);
  auto bad_block = req;
  bad_block.set_output_encoding(pb::OUTPUT_ENCODING_PLAIN);
  bad_block.set_output_block_size(4);
  CHECK(DecodeBackward(bad_block, Limits{}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("named gradients decode by name; unnamed, repeated or malformed ones are INVALID_ARGUMENT") {
  pb::BackwardRequest req;
  req.set_forward_id("f");
  req.add_grad_output_shape(2);
  req.set_grad_output_data(std::string(8, '\0'));
  auto* pooled = req.add_grad_outputs();
  pooled->set_name("pooled");
  pooled->add_shape(1);
  pooled->set_data(std::string(4, '\0'));
  const std::vector<float> g = {1.0f, -2.0f, 3.0f};
  auto eg = EncodeBlockwiseInt8(g.data(), g.size(), 64);
  REQUIRE(eg.ok());
  auto* q = req.add_grad_outputs();
  q->set_name("output_1");
  q->add_shape(3);
  q->set_data(std::string(eg->codes.begin(), eg->codes.end()));
  q->mutable_int8_blockwise()->set_block_size(64);
  q->mutable_int8_blockwise()->mutable_scales()->Add(eg->scales.begin(), eg->scales.end());
  auto d = DecodeBackward(req, Limits{});
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  REQUIRE(d->request.named_grad_outputs.size() == 2);
  CHECK(d->request.named_grad_outputs[0].name == "pooled");
  CHECK(d->request.named_grad_outputs[1].name == "output_1");
  auto got = AsFloats(d->request.named_grad_outputs[1].tensor);
  for (size_t i = 0; i < g.size(); ++i) CHECK(std::fabs(got[i] - g[i]) <= eg->scales[0] / 2 * (1 + 1e-6f));

  auto unnamed = req;
  unnamed.mutable_grad_outputs(0)->clear_name();
  CHECK(DecodeBackward(unnamed, Limits{}).status().code() == StatusCode::kInvalidArgument);
  auto twice = req;
  twice.mutable_grad_outputs(1)->set_name("pooled");
  auto t = DecodeBackward(twice, Limits{});
  CHECK(t.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(t.status().message(), Catch::Contains("twice"));
  auto short_bytes = req;
  short_bytes.mutable_grad_outputs(0)->mutable_data()->pop_back();
  CHECK(DecodeBackward(short_bytes, Limits{}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a training forward takes no past cache") {
  auto r = Floats({1, 2}, 2);
  r.set_training_mode(true);
  REQUIRE(DecodeCompute(r, Limits{}).ok());
  auto* e = r.add_past_key_values();
  for (auto* shape : {e->mutable_key_shape(), e->mutable_value_shape()}) {
    for (int d : {1, 1, 1, 2}) shape->Add(d);
  }
  e->set_key_data(std::string(8, '\0'));
  e->set_value_data(std::string(8, '\0'));
  auto d = DecodeCompute(r, Limits{});
  CHECK(d.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(d.status().message(), Catch::Contains("past_key_values"));
  r.clear_training_mode();
  CHECK(DecodeCompute(r, Limits{}).ok());
}
