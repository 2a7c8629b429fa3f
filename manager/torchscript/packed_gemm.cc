// Gemm (packed_gemm.h): picks the kernel, blocks a call for the caches and splits it by
// output columns between the calling thread and the helper pool.
#include "manager/torchscript/packed_gemm.h"

#include <algorithm>

#include "manager/torchscript/packed_gemm_internal.h"
#include "manager/torchscript/packed_gemm_pool.h"

namespace splitlearnd::packed_gemm {

#if defined(__x86_64__)

bool Supported() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

bool Supported(Isa isa) {
  if (isa == Isa::kAvx512) {
    static const bool ok = __builtin_cpu_supports("avx512f");
    return ok;
  }
  return Supported();
}

Isa BestIsa() {
  static const Isa best = Supported(Isa::kAvx512) ? Isa::kAvx512 : Isa::kAvx2;
  return best;
}

namespace {

using detail::kSliceK;
using detail::PanelOffset;
using detail::Panels;
using detail::Start;

// Blocking: 96 rows of x per K slice (96 KiB) stay in L2 while every panel passes
// over them.
constexpr int64_t kBlockM = 96;

// Rows of x times `width` neighbouring panels (1 or 2; AVX2 takes one at a time).
void Rows(Isa isa, int width, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y,
          int64_t ldy, Start start, const float* bias) {
  if (isa == Isa::kAvx512) {
    detail::RowsAvx512(width, start, x, rows, ldx, panel, depth, y, ldy, bias);
  } else {
    detail::RowsAvx2(start, x, rows, ldx, panel, depth, y, ldy, bias);
  }
}

// Output panels [p_begin, p_end) of y = x B + bias; p_end may include the last, partial
// panel. Panels are independent columns of y, so threads may compute disjoint ranges.
void GemmPanels(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, const float* bias, float* y,
                Isa isa, int64_t p_begin, int64_t p_end) {
  const int64_t full_panels = n / kPanelWidth;
  const int64_t tail = n - full_panels * kPanelWidth;
  const int64_t panels = Panels(n);
  const bool has_tail = tail > 0 && p_end > full_panels;
  const int64_t full_end = std::min(p_end, full_panels);
  // Panels a tile spans: AVX-512 takes them in pairs (a last odd one alone).
  const int64_t step = isa == Isa::kAvx512 ? 2 : 1;
  // The last, partial panel is computed 16 wide into a scratch block and its first
  // `tail` columns copied out, so no store runs past a row of y.
  alignas(64) float scratch[kBlockM * kPanelWidth];  // 6 KiB, one row block
  float tail_bias[kPanelWidth] = {};
  if (has_tail && bias) std::copy(bias + full_panels * kPanelWidth, bias + n, tail_bias);
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t rows = std::min(kBlockM, m - m0);
    const float* xb = x + m0 * k;
    float* yb = y + m0 * n;
    if (k == 0) {  // an empty sum: bias, or zero
      const int64_t c_end = std::min(n, p_end * kPanelWidth);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = p_begin * kPanelWidth; c < c_end; ++c) yb[r * n + c] = bias ? bias[c] : 0.0f;
      }
      continue;
    }
    for (int64_t k0 = 0; k0 < k; k0 += kSliceK) {
      const int64_t depth = std::min(kSliceK, k - k0);
      const Start start = k0 > 0 ? Start::kAccumulate : (bias ? Start::kBias : Start::kZero);
      for (int64_t p = p_begin; p < full_end; p += step) {
        const int width = static_cast<int>(std::min(step, full_end - p));
        Rows(isa, width, xb + k0, rows, k, packed + PanelOffset(k0, depth, p, panels), depth, yb + p * kPanelWidth, n,
             start, bias ? bias + p * kPanelWidth : nullptr);
      }
      if (has_tail) {
        Rows(isa, 1, xb + k0, rows, k, packed + PanelOffset(k0, depth, full_panels, panels), depth, scratch,
             kPanelWidth, start, tail_bias);
      }
    }
    if (has_tail) {
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(scratch + r * kPanelWidth, scratch + r * kPanelWidth + tail,
                  yb + r * n + full_panels * kPanelWidth);
      }
    }
  }
}

// Below this much work (multiply-adds) a call stays on one thread: handing half of it
// to a helper would cost about what it saves.
constexpr int64_t kMinParallelMacs = int64_t{4} << 20;

}  // namespace

void Gemm(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, const float* bias, float* y, Isa isa,
          int threads) {
  const int64_t panels = Panels(n);
  // Parts are whole panel pairs (AVX-512 tiles span two), at least two pairs each.
  const int64_t unit = 2;
  const int64_t units = (panels + unit - 1) / unit;
  int64_t parts = std::min<int64_t>(std::max(threads, 1), units / 2);
  if (m * k * n < kMinParallelMacs) parts = 1;
  if (parts <= 1) {
    GemmPanels(x, m, k, packed, n, bias, y, isa, 0, panels);
    return;
  }
  detail::HelperPool::Get().Run(static_cast<int>(parts), [&](int i) {
    const int64_t u0 = units * i / parts, u1 = units * (i + 1) / parts;
    GemmPanels(x, m, k, packed, n, bias, y, isa, u0 * unit, std::min(panels, u1 * unit));
  });
}

#else  // not x86-64: the packing pass never runs, so Gemm is never called

bool Supported() { return false; }
bool Supported(Isa) { return false; }
Isa BestIsa() { return Isa::kAvx2; }

void Gemm(const float*, int64_t, int64_t, const float*, int64_t, const float*, float*, Isa, int) {}

#endif

}  // namespace splitlearnd::packed_gemm
