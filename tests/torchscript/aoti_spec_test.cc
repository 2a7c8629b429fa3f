// The input description of AOTInductor packages (`splitlearnd.inputs`) and the checks
// that stand between a request and a compiled package, which checks nothing itself.
#include "manager/torchscript/aoti_spec.h"

#include "tests/support/catch.h"

using namespace splitlearnd;

namespace {

std::vector<AotiInput> Spec(const std::string& text) {
  auto s = ParseAotiInputs(text);
  REQUIRE(s.ok());
  return *s;
}

}  // namespace

TEST_CASE("a description parses, and prints back the same") {
  const std::string text = "hidden_states:float32:B=1..64xT=1..512x768;mask:bool:B=1..64xT=1..512";
  auto spec = Spec(text);
  REQUIRE(spec.size() == 2);
  CHECK(spec[0].name == "hidden_states");
  CHECK(spec[0].dtype == DType::kFloat32);
  REQUIRE(spec[0].dims.size() == 3);
  CHECK(spec[0].dims[0].symbol == "B");
  CHECK(spec[0].dims[0].min == 1);
  CHECK(spec[0].dims[0].max == 64);
  CHECK(spec[0].dims[2].size == 768);
  CHECK(spec[1].dtype == DType::kBool);
  CHECK(FormatAotiInputs(spec) == text);
  CHECK(AotiMaxBatchRows(spec) == 64);
  CHECK(Spec("x:int64:").front().dims.empty());  // a scalar input
}

TEST_CASE("a malformed description is an error that names the part") {
  for (const char* bad : {"", "x", "x:float32", "x:complex64:4", "x:float32:4x", "x:float32:-4", "x:float32:B=4",
                          "x:float32:B=9..4", "x:float32:=1..4", "x:float32:B=1..4;y:float32:B=1..8", ":float32:4"}) {
    CAPTURE(bad);
    auto s = ParseAotiInputs(bad);
    CHECK_FALSE(s.ok());
    CHECK(s.status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("requests are checked for count, dtype, rank, sizes, ranges and shared dimensions") {
  const auto spec = Spec("x:float32:B=1..8x16;y:float32:B=1..8x4");
  using A = AotiArg;
  CHECK(CheckAotiArgs(spec, {A{DType::kFloat32, {3, 16}}, A{DType::kFloat32, {3, 4}}}).ok());
  CHECK(CheckAotiArgs(spec, {A{DType::kFloat32, {8, 16}}, A{DType::kFloat32, {8, 4}}}).ok());
  struct Case {
    std::vector<AotiArg> args;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{A{DType::kFloat32, {3, 16}}}, "takes 2 input(s), the request has 1"},
      {{A{DType::kFloat16, {3, 16}}, A{DType::kFloat32, {3, 4}}}, "must be float32, not float16"},
      {{A{DType::kFloat32, {3, 16, 1}}, A{DType::kFloat32, {3, 4}}}, "must have 2 dimension(s)"},
      {{A{DType::kFloat32, {3, 15}}, A{DType::kFloat32, {3, 4}}}, "dimension 1 must be 16"},
      {{A{DType::kFloat32, {9, 16}}, A{DType::kFloat32, {9, 4}}}, "must be 1..8"},
      {{A{DType::kFloat32, {0, 16}}, A{DType::kFloat32, {0, 4}}}, "must be 1..8"},
      {{A{DType::kFloat32, {3, 16}}, A{DType::kFloat32, {2, 4}}}, "another input has B = 3"},
  };
  for (const auto& c : cases) {
    const Status s = CheckAotiArgs(spec, c.args);
    CAPTURE(c.says);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(s.message(), Catch::Contains(c.says));
  }
}

TEST_CASE("merging is allowed only along one dynamic batch dimension that sizes nothing else") {
  CHECK(AotiMaxBatchRows(Spec("x:float32:B=1..32x16")) == 32);
  CHECK(AotiMaxBatchRows(Spec("x:float32:4x16")) == 0);
  CHECK(AotiMaxBatchRows(Spec("x:float32:B=1..32x16;y:float32:C=1..32x16")) == 0);
  CHECK(AotiMaxBatchRows(Spec("x:float32:B=1..32xB=1..32")) == 0);
  CHECK(AotiMaxBatchRows(Spec("x:int64:")) == 0);
}
