// models[].optimize and models[].prepack_linear at the graph level: the packed Linear
// must compute what BLAS computes for every shape the kernel has a separate path for
// (row tiles of 6 and their tails, whole and partial 16-column panels, K slices of 256
// and their tails, 1-D to 3-D inputs), and must leave alone what it cannot pack.
// Includes libtorch, as the adapter it tests (and bench/inprocess) does.
// libtorch first: c10's logging defines a CHECK of its own (fatal on failure, never
// counted by Catch). It is dropped, so that catch.hpp's CHECK is the one used below.
#include <torch/script.h>
#undef CHECK
#include "tests/support/catch.h"

#include <string>

#include "manager/torchscript/optimize.h"

namespace {

using splitlearnd::OptimizeForInference;
using splitlearnd::PrepackLinearSupported;

int CountPacked(torch::jit::Module& module) {
  int n = 0;
  for (const torch::jit::Node* node : module.get_method("forward").graph()->nodes()) {
    if (node->kind() == c10::Symbol::fromQualString("splitlearnd::packed_linear")) ++n;
  }
  return n;
}

int CountKind(torch::jit::Module& module, const char* kind) {
  int n = 0;
  for (const torch::jit::Node* node : module.get_method("forward").graph()->nodes()) {
    if (node->kind() == c10::Symbol::fromQualString(kind)) ++n;
  }
  return n;
}

// A module with parameter w (shape w_shape), b (b_size, or none) and `source`.
torch::jit::Module Define(const std::vector<int64_t>& w_shape, int64_t b_size, const std::string& source,
                          at::ScalarType dtype = at::kFloat) {
  torch::jit::Module m("Shard");
  m.register_parameter("w", torch::randn(w_shape, at::TensorOptions().dtype(dtype)), false);
  if (b_size > 0) m.register_parameter("b", torch::randn({b_size}, at::TensorOptions().dtype(dtype)), false);
  m.define(source);
  m.eval();
  return m;
}

at::Tensor Forward(torch::jit::Module& m, const at::Tensor& x) {
  c10::InferenceMode guard;
  return m.forward({x}).toTensor();
}

void CheckSame(const at::Tensor& got, const at::Tensor& want) {
  REQUIRE(got.sizes() == want.sizes());
  REQUIRE(got.scalar_type() == want.scalar_type());
  if (want.numel() == 0) return;
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>() + 1.0;
  INFO("max abs difference " << err << ", largest value " << scale - 1.0);
  CHECK(err <= 1e-5 * scale);
}

}  // namespace

TEST_CASE("a packed Linear computes what BLAS does, for every row, column and depth path") {
  const int64_t k = GENERATE(1, 7, 256, 300, 513);
  const int64_t n = GENERATE(1, 15, 16, 17, 40);
  const std::string form = GENERATE("matmul+add", "linear", "linear without bias");
  INFO("K " << k << ", N " << n << ", " << form);
  torch::manual_seed(k * 100 + n);
  torch::jit::Module plain =
      form == "matmul+add"
          ? Define({k, n}, n, "def forward(self, x):\n    return torch.matmul(x, self.w) + self.b\n")
          : form == "linear" ? Define({n, k}, n, "def forward(self, x):\n    return torch.linear(x, self.w, self.b)\n")
                             : Define({n, k}, 0, "def forward(self, x):\n    return torch.linear(x, self.w)\n");
  torch::jit::Module packed = OptimizeForInference(plain, /*prepack_linear=*/true);
  if (!PrepackLinearSupported()) {
    WARN("this CPU has no AVX2/FMA: prepack_linear leaves the graph as it is");
    CHECK(CountPacked(packed) == 0);
  } else {
    CHECK(CountPacked(packed) == 1);
    CHECK(CountKind(packed, "aten::add") == 0);  // the constant bias is folded into the kernel
  }
  for (int64_t rows : {1, 5, 6, 7, 13, 97, 200}) {
    INFO(rows << " rows");
    const at::Tensor x2 = torch::randn({rows, k});
    CheckSame(Forward(packed, x2), Forward(plain, x2));
    const at::Tensor x3 = torch::randn({2, rows, k});
    CheckSame(Forward(packed, x3), Forward(plain, x3));
  }
  const at::Tensor x1 = torch::randn({k});
  CheckSame(Forward(packed, x1), Forward(plain, x1));
  const at::Tensor strided = torch::randn({3, 2 * k}).narrow(1, 0, k);  // not contiguous
  CheckSame(Forward(packed, strided), Forward(plain, strided));
  const at::Tensor empty = torch::randn({0, k});
  CheckSame(Forward(packed, empty), Forward(plain, empty));
}

TEST_CASE("optimize keeps aten::linear (addmm, bias fused) instead of a transposed-weight matmul and an add") {
  torch::manual_seed(5);
  auto plain = Define({24, 32}, 24, "def forward(self, x):\n    return torch.linear(x, self.w, self.b)\n");
  auto optimized = OptimizeForInference(plain, /*prepack_linear=*/false);
  CHECK(CountKind(optimized, "aten::linear") == 1);
  CHECK(CountKind(optimized, "aten::matmul") == 0);
  CHECK(CountKind(optimized, "aten::add") == 0);
  const at::Tensor x = torch::randn({7, 32});
  CheckSame(Forward(optimized, x), Forward(plain, x));
}

TEST_CASE("a packed weight of 2 MiB or more (kept in a huge-page buffer) computes what BLAS does") {
  torch::manual_seed(768);
  torch::jit::Module plain = Define({768, 768}, 768, "def forward(self, x):\n    return torch.linear(x, self.w, self.b)\n");
  torch::jit::Module packed = OptimizeForInference(plain, /*prepack_linear=*/true);
  CHECK(CountPacked(packed) == (PrepackLinearSupported() ? 1 : 0));
  for (int64_t rows : {1, 10, 40}) {
    INFO(rows << " rows");
    const at::Tensor x = torch::randn({rows, 768});
    CheckSame(Forward(packed, x), Forward(plain, x));
  }
}

TEST_CASE("prepack_linear leaves what it cannot pack, and the numbers stay those of the plain module") {
  SECTION("a bias computed at run time") {
    auto plain = Define({24, 32}, 24, "def forward(self, x):\n    return torch.linear(x, self.w, self.b * x.mean())\n");
    auto packed = OptimizeForInference(plain, true);
    const at::Tensor x = torch::randn({5, 32});
    CheckSame(Forward(packed, x), Forward(plain, x));
  }
  SECTION("float64 weights") {
    auto plain = Define({32, 24}, 24, "def forward(self, x):\n    return torch.matmul(x, self.w) + self.b\n",
                        at::kDouble);
    auto packed = OptimizeForInference(plain, true);
    CHECK(CountPacked(packed) == 0);
    const at::Tensor x = torch::randn({5, 32}, at::kDouble);
    CheckSame(Forward(packed, x), Forward(plain, x));
  }
  SECTION("a weight computed at run time") {
    auto plain = Define({32, 24}, 0, "def forward(self, x):\n    return torch.matmul(x, self.w * x.mean())\n");
    auto packed = OptimizeForInference(plain, true);
    CHECK(CountPacked(packed) == 0);
    const at::Tensor x = torch::randn({5, 32});
    CheckSame(Forward(packed, x), Forward(plain, x));
  }
  SECTION("aten::linear itself, in a frozen module that optimize_for_inference has not rewritten") {
    if (!PrepackLinearSupported()) return;
    auto plain = Define({24, 32}, 24, "def forward(self, x):\n    return torch.linear(x, self.w, self.b)\n");
    torch::jit::Module frozen = torch::jit::freeze(plain);
    REQUIRE(CountKind(frozen, "aten::linear") == 1);
    CHECK(splitlearnd::PrepackLinearWeights(frozen) == 1);
    CHECK(CountKind(frozen, "aten::linear") == 0);
    const at::Tensor x = torch::randn({7, 32});
    CheckSame(Forward(frozen, x), Forward(plain, x));
  }
  SECTION("without prepack_linear the graph has no packed layer") {
    auto plain = Define({32, 24}, 24, "def forward(self, x):\n    return torch.matmul(x, self.w) + self.b\n");
    auto optimized = OptimizeForInference(plain, false);
    CHECK(CountPacked(optimized) == 0);
  }
}

TEST_CASE("a packed Linear refuses a wrong input with the words the daemon reads as the caller's fault") {
  if (!PrepackLinearSupported()) {
    WARN("this CPU has no AVX2/FMA: nothing is packed, nothing to check");
    return;
  }
  auto plain = Define({32, 24}, 24, "def forward(self, x):\n    return torch.matmul(x, self.w) + self.b\n");
  auto packed = OptimizeForInference(plain, true);
  REQUIRE(CountPacked(packed) == 1);
  CHECK_THROWS_WITH(Forward(packed, torch::randn({5, 31})), Catch::Contains("cannot be multiplied") &&
                                                                Catch::Contains("shape"));
  CHECK_THROWS_WITH(Forward(packed, torch::randn({5, 32}, at::kDouble)), Catch::Contains("expected a float32"));
  CHECK_THROWS_WITH(Forward(packed, torch::tensor(1.0f)), Catch::Contains("shape"));
}

TEST_CASE("packed_linear called with arguments the pass never makes (as a model's own code could) is refused, not run") {
  if (!PrepackLinearSupported()) {
    WARN("this CPU has no AVX2/FMA: the operator refuses every call");
    return;
  }
  // Through the dispatcher, where a TorchScript call of the operator lands.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("splitlearnd::packed_linear", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, int64_t)>();
  const at::Tensor x = torch::randn({2, 32});
  auto call = [&](const at::Tensor& packed, int64_t n) {
    c10::InferenceMode guard;
    return op.call(x, packed, c10::nullopt, n);
  };
  // A panel count that does not cover n would have the kernel read past the buffer.
  CHECK_THROWS_WITH(call(torch::zeros({1, 32, 16}), 1 << 20), Catch::Contains("not one that prepack_linear made"));
  CHECK_THROWS_WITH(call(torch::zeros({1, 32, 8}), 8), Catch::Contains("not one that prepack_linear made"));
  CHECK_THROWS_WITH(call(torch::zeros({32 * 16 + 1}).narrow(0, 1, 32 * 16).view({1, 32, 16}), 16),
                    Catch::Contains("not one that prepack_linear made"));  // not 32-byte aligned
  CHECK_THROWS_WITH(call(torch::zeros({1, 32, 16}, at::kDouble), 16), Catch::Contains("not one that prepack_linear made"));
  CHECK_THROWS_WITH(call(torch::zeros({1, 32, 16}), -1), Catch::Contains("out_features"));
  // What the pass makes runs.
  CHECK(call(torch::zeros({1, 32, 16}), 16).sizes() == at::IntArrayRef({2, 16}));
}
