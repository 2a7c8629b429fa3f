// packed_gemm on its own (no libtorch, so it also runs under TSan): every kernel
// against a plain sum, and the threaded split against the one-thread result.
#include "manager/torchscript/packed_gemm.h"

#include "tests/support/catch.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

namespace pg = splitlearnd::packed_gemm;

namespace {

// A K x N weight in a Linear's layout (N x K) and its packed form, 64-byte aligned.
struct Packed {
  Packed(int64_t k_, int64_t n_, unsigned seed) : k(k_), n(n_), w(static_cast<size_t>(k_ * n_)), bias(n_) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& v : w) v = dist(gen);
    for (float& v : bias) v = dist(gen);
    buffer.resize(pg::PackedFloats(k, n) + 16);
    data = buffer.data();
    while (reinterpret_cast<uintptr_t>(data) % 64 != 0) ++data;
    // Pack reads W (N x K) as the K x N matrix B through its strides.
    pg::Pack(w.data(), k, n, /*stride_k=*/1, /*stride_n=*/k, data);
  }
  int64_t k, n;
  std::vector<float> w, bias, buffer;
  float* data = nullptr;
};

std::vector<float> Random(size_t count, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& f : v) f = dist(gen);
  return v;
}

// The index of the first element where a and b differ (a.size() where none does).
size_t FirstDifference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  return static_cast<size_t>(std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin());
}

}  // namespace

TEST_CASE("every packed GEMM kernel this CPU has (AVX2 and AVX-512) computes x W + b, for every tile and panel path") {
  const auto isa = GENERATE(pg::Isa::kAvx2, pg::Isa::kAvx512);
  const char* name = isa == pg::Isa::kAvx2 ? "AVX2" : "AVX-512";
  if (!pg::Supported(isa)) {
    WARN("this CPU has no " << name << ": that kernel is never chosen here");
    return;
  }
  // N covers one panel, an odd and an even panel count (AVX-512 takes panels in
  // pairs) and partial last panels; K covers one slice, a slice tail and two slices.
  const int64_t k = GENERATE(1, 100, 256, 600);
  const int64_t n = GENERATE(1, 16, 17, 48, 64, 70);
  const Packed p(k, n, static_cast<unsigned>(k * 1000 + n));
  // Every row remainder of both kernels' tiles (6 and 12 rows), a whole 96-row block,
  // and blocks after it.
  std::vector<int64_t> row_counts;
  for (int64_t m = 1; m <= 30; ++m) row_counts.push_back(m);
  for (int64_t m : {96, 97, 200}) row_counts.push_back(m);
  for (int64_t m : row_counts) {
    INFO(name << ": M " << m << ", K " << k << ", N " << n);
    const std::vector<float> x = Random(static_cast<size_t>(m * k), static_cast<unsigned>(m));
    for (const bool with_bias : {true, false}) {
      std::vector<float> y(static_cast<size_t>(m * n), -7.0f);
      pg::Gemm(x.data(), m, k, p.data, n, with_bias ? p.bias.data() : nullptr, y.data(), isa);
      double worst = 0.0;
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double want = with_bias ? p.bias[c] : 0.0;
          for (int64_t q = 0; q < k; ++q) want += static_cast<double>(x[r * k + q]) * p.w[c * k + q];
          worst = std::max(worst, std::abs(want - y[r * n + c]));
        }
      }
      INFO("bias " << with_bias << ", largest error " << worst);
      CHECK(worst <= 1e-5 * (k + 1));
    }
  }
}

TEST_CASE("a GEMM split over threads gives the one-thread result to the bit, also with callers at once") {
  const pg::Isa isa = pg::BestIsa();
  if (!pg::Supported(isa)) {
    WARN("this CPU has no AVX2/FMA: there is no kernel to run");
    return;
  }
  // 63 panels (the last partial), about 4 to 60 million multiply-adds: every call is
  // big enough to split.
  const Packed p(700, 1000, 7);
  for (int64_t m : {6, 13, 40, 97}) {
    const std::vector<float> x = Random(static_cast<size_t>(m * p.k), static_cast<unsigned>(m));
    std::vector<float> want(static_cast<size_t>(m * p.n));
    pg::Gemm(x.data(), m, p.k, p.data, p.n, p.bias.data(), want.data(), isa, 1);
    for (int threads : {2, 3, 4, 64}) {
      INFO(m << " rows, " << threads << " threads");
      std::vector<float> got(want.size(), -7.0f);
      pg::Gemm(x.data(), m, p.k, p.data, p.n, p.bias.data(), got.data(), isa, threads);
      CHECK(FirstDifference(got, want) == want.size());
    }
    // Three callers share the pool at once, each with its own output.
    std::vector<std::vector<float>> outs(3, std::vector<float>(want.size(), -7.0f));
    std::vector<std::thread> callers;
    for (auto& out : outs) {
      callers.emplace_back([&, out_ptr = out.data()] {
        for (int round = 0; round < 20; ++round) {
          pg::Gemm(x.data(), m, p.k, p.data, p.n, p.bias.data(), out_ptr, isa, 2);
        }
      });
    }
    for (std::thread& t : callers) t.join();
    for (const auto& out : outs) {
      INFO(m << " rows, callers at once");
      CHECK(FirstDifference(out, want) == want.size());
    }
  }
}
