// common/blockwise_int8.h: 8-bit blockwise quantisation and its error bound.
#include "common/blockwise_int8.h"

#include <cfloat>
#include <cmath>
#include <limits>
#include <random>

#include "tests/support/catch.h"

using namespace splitlearnd;

namespace {

std::string Bytes(const std::vector<int8_t>& codes) { return std::string(codes.begin(), codes.end()); }

std::vector<float> RoundTrip(const std::vector<float>& x, size_t block, BlockwiseInt8* enc_out = nullptr) {
  auto enc = EncodeBlockwiseInt8(x.data(), x.size(), block);
  REQUIRE(enc.ok());
  REQUIRE(enc->codes.size() == x.size());
  REQUIRE(enc->scales.size() == (x.size() + block - 1) / block);
  std::vector<float> y;
  auto s = DecodeBlockwiseInt8(Bytes(enc->codes), enc->scales.data(), enc->scales.size(), block, x.size(), "t", &y);
  REQUIRE(s.ok());
  REQUIRE(y.size() == x.size());
  if (enc_out) *enc_out = *enc;
  return y;
}

// The documented bound: half a step of the value's block, plus one float32 rounding.
void CheckBound(const std::vector<float>& x, const std::vector<float>& y, const BlockwiseInt8& enc, size_t block) {
  for (size_t i = 0; i < x.size(); ++i) {
    const float scale = enc.scales[i / block];
    REQUIRE(std::isfinite(y[i]));
    REQUIRE(std::isfinite(scale));
    const double err = std::fabs(static_cast<double>(y[i]) - static_cast<double>(x[i]));
    const double bound = static_cast<double>(scale) / 2 + std::ldexp(std::fabs(static_cast<double>(y[i])), -24);
    INFO("i=" << i << " x=" << x[i] << " y=" << y[i] << " scale=" << scale);
    REQUIRE(err <= bound);
  }
}

}  // namespace

TEST_CASE("random blocks decode within half a step, and the scale is absmax/127 rounded up") {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (size_t block : {1u, 7u, 64u, 1000u}) {
    std::vector<float> x(1000);
    for (float& v : x) v = normal(rng);
    BlockwiseInt8 enc;
    auto y = RoundTrip(x, block, &enc);
    CheckBound(x, y, enc, block);
    for (size_t b = 0; b < enc.scales.size(); ++b) {
      float absmax = 0;
      for (size_t i = b * block; i < std::min(x.size(), (b + 1) * block); ++i) absmax = std::max(absmax, std::fabs(x[i]));
      CHECK(static_cast<double>(enc.scales[b]) >= static_cast<double>(absmax) / 127.0);
      CHECK(static_cast<double>(std::nextafter(enc.scales[b], 0.0f)) < static_cast<double>(absmax) / 127.0);
    }
    for (int8_t c : enc.codes) CHECK(c >= -127);
  }
}

TEST_CASE("a last partial block has its own scale") {
  std::vector<float> x = {1, 2, 3, 4, 5, 100};  // blocks of 4: {1,2,3,4} and {5,100}
  BlockwiseInt8 enc;
  auto y = RoundTrip(x, 4, &enc);
  REQUIRE(enc.scales.size() == 2);
  CHECK(enc.scales[0] >= 4.0f / 127);
  CHECK(enc.scales[1] >= 100.0f / 127);
  CHECK(enc.codes[3] == 127);
  CHECK(enc.codes[5] == 127);
  CheckBound(x, y, enc, 4);
}

TEST_CASE("constant and all-zero blocks") {
  std::vector<float> c(10, -2.5f);
  BlockwiseInt8 enc;
  auto y = RoundTrip(c, 4, &enc);
  for (int8_t code : enc.codes) CHECK(code == -127);
  CheckBound(c, y, enc, 4);

  std::vector<float> z(9, 0.0f);
  z[8] = 1.0f;  // blocks of 4: two zero blocks, then {1}
  y = RoundTrip(z, 4, &enc);
  CHECK(enc.scales[0] == 0.0f);
  CHECK(enc.scales[1] == 0.0f);
  for (size_t i = 0; i < 8; ++i) CHECK(y[i] == 0.0f);
  CheckBound(z, y, enc, 4);
}

TEST_CASE("blocks near FLT_MAX neither overflow nor lose the bound") {
  std::vector<float> x = {FLT_MAX, -FLT_MAX, FLT_MAX / 2, 1.0f, std::nextafter(FLT_MAX, 0.0f)};
  BlockwiseInt8 enc;
  auto y = RoundTrip(x, 8, &enc);
  CHECK(std::isfinite(enc.scales[0]));
  CHECK(y[0] == FLT_MAX);
  CHECK(y[1] == -FLT_MAX);
  CheckBound(x, y, enc, 8);
}

TEST_CASE("subnormal blocks keep the bound (the scale never rounds to 0)") {
  const float tiny = std::numeric_limits<float>::denorm_min();
  std::vector<float> x = {tiny, -tiny, 0.0f, tiny * 3, 1e-40f, -1e-39f, 5e-44f};
  for (size_t block : {1u, 2u, 3u, 7u}) {
    BlockwiseInt8 enc;
    auto y = RoundTrip(x, block, &enc);
    CheckBound(x, y, enc, block);
  }
  BlockwiseInt8 enc;
  auto y = RoundTrip({tiny}, 1, &enc);
  CHECK(enc.scales[0] > 0.0f);
  CHECK(y[0] == tiny);
}

TEST_CASE("NaN and infinite values are refused by the encoder") {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = {1.0f, bad, 2.0f};
    auto enc = EncodeBlockwiseInt8(x.data(), x.size(), 2);
    REQUIRE_FALSE(enc.ok());
    CHECK(enc.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(enc.status().message(), Catch::Contains("not finite"));
  }
  std::vector<float> x = {1.0f};
  CHECK(EncodeBlockwiseInt8(x.data(), 1, 0).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("an empty tensor has no blocks") {
  auto enc = EncodeBlockwiseInt8(nullptr, 0, 4);
  REQUIRE(enc.ok());
  CHECK(enc->scales.empty());
  std::vector<float> y = {1};
  REQUIRE(DecodeBlockwiseInt8("", nullptr, 0, 4, 0, "t", &y).ok());
  CHECK(y.empty());
}

TEST_CASE("malformed encodings are INVALID_ARGUMENT") {
  const std::string codes(5, '\x01');
  const std::vector<float> two = {1.0f, 1.0f};
  std::vector<float> y;
  auto code = [&](const std::string& c, const std::vector<float>& sc, size_t block, size_t count) {
    return DecodeBlockwiseInt8(c, sc.data(), sc.size(), block, count, "data", &y).code();
  };
  CHECK(code(codes, two, 4, 5) == StatusCode::kOk);
  CHECK(code(codes, {1.0f}, 4, 5) == StatusCode::kInvalidArgument);             // too few scales
  CHECK(code(codes, {1, 1, 1}, 4, 5) == StatusCode::kInvalidArgument);          // too many
  CHECK(code(codes.substr(1), two, 4, 5) == StatusCode::kInvalidArgument);      // too few bytes
  CHECK(code(codes + "x", two, 4, 5) == StatusCode::kInvalidArgument);          // too many
  CHECK(code(codes, two, 0, 5) == StatusCode::kInvalidArgument);                // block 0
  CHECK(code(codes, {1.0f, -1.0f}, 4, 5) == StatusCode::kInvalidArgument);      // negative scale
  CHECK(code(codes, {1.0f, std::numeric_limits<float>::quiet_NaN()}, 4, 5) == StatusCode::kInvalidArgument);
  CHECK(code(codes, {std::numeric_limits<float>::infinity(), 1.0f}, 4, 5) == StatusCode::kInvalidArgument);
  auto s = DecodeBlockwiseInt8(codes, two.data(), 1, 4, 5, "data", &y);
  CHECK_THAT(s.message(), Catch::Contains("data"));
}
