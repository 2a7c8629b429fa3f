#include "manager/torchscript/packed_gemm.h"

#include <algorithm>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace splitlearnd::packed_gemm {

namespace {

// Depth of a K slice: one panel's slice (256 x 16 floats, 16 KiB) and six rows of x
// (6 KiB) stay in L1 while a tile runs (measured on a Zen 3 core at K = N = 768).
constexpr int64_t kSliceK = 256;

int64_t Panels(int64_t n) { return (n + kPanelWidth - 1) / kPanelWidth; }

// The packed layout, for Pack and Gemm alike: where panel p's rows of the K slice that
// starts at row k0 (and is `depth` rows deep) begin, in floats from the start.
int64_t PanelOffset(int64_t k0, int64_t depth, int64_t p, int64_t panels) {
  return (k0 * panels + p * depth) * kPanelWidth;
}

}  // namespace

std::size_t PackedFloats(int64_t k, int64_t n) { return static_cast<std::size_t>(Panels(n) * k * kPanelWidth); }

void Pack(const float* b, int64_t k, int64_t n, int64_t stride_k, int64_t stride_n, float* out) {
  const int64_t panels = Panels(n);
  for (int64_t k0 = 0; k0 < k; k0 += kSliceK) {
    const int64_t depth = std::min(kSliceK, k - k0);
    for (int64_t p = 0; p < panels; ++p) {
      float* panel = out + PanelOffset(k0, depth, p, panels);
      for (int64_t kk = 0; kk < depth; ++kk) {
        float* row = panel + kk * kPanelWidth;
        for (int64_t c = 0; c < kPanelWidth; ++c) {
          const int64_t col = p * kPanelWidth + c;
          row[c] = col < n ? b[(k0 + kk) * stride_k + col * stride_n] : 0.0f;
        }
      }
    }
  }
}

#if defined(__x86_64__)

bool Supported() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

// Blocking: 96 rows of x per K slice (96 KiB) stay in L2 while every panel passes
// over them.
constexpr int64_t kRowsPerTile = 6;  // 6 x 16 outputs: 12 accumulators of 16 registers
constexpr int64_t kBlockM = 96;

// How a tile's accumulators start: from zero, from the bias, or from what y holds
// (every K slice after the first).
enum class Start { kZero, kBias, kAccumulate };

// Rows x 16 outputs at y (leading dimension ldy) over one K slice of `depth`. With
// Fetch, it also asks for the panel that follows this one in memory (the next one the
// loops reach), a line per step: the weight is too big for L2 and a serving process's
// other work evicts it from L3, so without this each new panel starts with misses.
template <int Rows, Start S, bool Fetch = false>
__attribute__((target("avx2,fma"), always_inline)) inline void Tile(const float* x, int64_t ldx,
                                                                   const float* panel, int64_t depth,
                                                                   float* y, int64_t ldy, const float* bias) {
  __m256 lo[Rows], hi[Rows];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    if constexpr (S == Start::kAccumulate) {
      lo[r] = _mm256_loadu_ps(y + r * ldy);
      hi[r] = _mm256_loadu_ps(y + r * ldy + 8);
    } else if constexpr (S == Start::kBias) {
      lo[r] = _mm256_loadu_ps(bias);
      hi[r] = _mm256_loadu_ps(bias + 8);
    } else {
      lo[r] = _mm256_setzero_ps();
      hi[r] = _mm256_setzero_ps();
    }
  }
  for (int64_t kk = 0; kk < depth; ++kk) {
    if constexpr (Fetch) _mm_prefetch(reinterpret_cast<const char*>(panel + (depth + kk) * kPanelWidth), _MM_HINT_T0);
    const __m256 w0 = _mm256_load_ps(panel + kk * kPanelWidth);
    const __m256 w1 = _mm256_load_ps(panel + kk * kPanelWidth + 8);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + kk);
      lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
      hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    _mm256_storeu_ps(y + r * ldy, lo[r]);
    _mm256_storeu_ps(y + r * ldy + 8, hi[r]);
  }
}

template <Start S>
__attribute__((target("avx2,fma"))) void RowsFrom(const float* x, int64_t rows, int64_t ldx, const float* panel,
                                                 int64_t depth, float* y, int64_t ldy, const float* bias) {
  int64_t r = 0;
  // The first full tile fetches the next panel; a block of fewer than 6 rows goes
  // without.
  if (rows >= kRowsPerTile) {
    Tile<kRowsPerTile, S, true>(x, ldx, panel, depth, y, ldy, bias);
    r = kRowsPerTile;
  }
  for (; r + kRowsPerTile <= rows; r += kRowsPerTile) {
    Tile<kRowsPerTile, S>(x + r * ldx, ldx, panel, depth, y + r * ldy, ldy, bias);
  }
  const float* xr = x + r * ldx;
  float* yr = y + r * ldy;
  switch (rows - r) {
    case 5: Tile<5, S>(xr, ldx, panel, depth, yr, ldy, bias); break;
    case 4: Tile<4, S>(xr, ldx, panel, depth, yr, ldy, bias); break;
    case 3: Tile<3, S>(xr, ldx, panel, depth, yr, ldy, bias); break;
    case 2: Tile<2, S>(xr, ldx, panel, depth, yr, ldy, bias); break;
    case 1: Tile<1, S>(xr, ldx, panel, depth, yr, ldy, bias); break;
    default: break;
  }
}

void Rows(const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy,
          Start start, const float* bias) {
  switch (start) {
    case Start::kZero: RowsFrom<Start::kZero>(x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kBias: RowsFrom<Start::kBias>(x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kAccumulate: RowsFrom<Start::kAccumulate>(x, rows, ldx, panel, depth, y, ldy, bias); break;
  }
}

}  // namespace

void Gemm(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, const float* bias, float* y) {
  const int64_t full_panels = n / kPanelWidth;
  const int64_t tail = n - full_panels * kPanelWidth;
  const int64_t panels = Panels(n);
  // The last, partial panel is computed 16 wide into a scratch block and its first
  // `tail` columns copied out, so no store runs past a row of y.
  std::vector<float> scratch(tail ? static_cast<std::size_t>(std::min(m, kBlockM) * kPanelWidth) : 0);
  float tail_bias[kPanelWidth] = {};
  if (tail && bias) std::copy(bias + full_panels * kPanelWidth, bias + n, tail_bias);
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t rows = std::min(kBlockM, m - m0);
    const float* xb = x + m0 * k;
    float* yb = y + m0 * n;
    if (k == 0) {  // an empty sum: bias, or zero
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < n; ++c) yb[r * n + c] = bias ? bias[c] : 0.0f;
      }
      continue;
    }
    for (int64_t k0 = 0; k0 < k; k0 += kSliceK) {
      const int64_t depth = std::min(kSliceK, k - k0);
      const Start start = k0 > 0 ? Start::kAccumulate : (bias ? Start::kBias : Start::kZero);
      for (int64_t p = 0; p < full_panels; ++p) {
        Rows(xb + k0, rows, k, packed + PanelOffset(k0, depth, p, panels), depth, yb + p * kPanelWidth, n, start,
             bias ? bias + p * kPanelWidth : nullptr);
      }
      if (tail) {
        Rows(xb + k0, rows, k, packed + PanelOffset(k0, depth, full_panels, panels), depth, scratch.data(),
             kPanelWidth, start, tail_bias);
      }
    }
    if (tail) {
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(scratch.data() + r * kPanelWidth, scratch.data() + r * kPanelWidth + tail,
                  yb + r * n + full_panels * kPanelWidth);
      }
    }
  }
}

#else  // not x86-64: the packing pass never runs, so Gemm is never called

bool Supported() { return false; }

void Gemm(const float*, int64_t, int64_t, const float*, int64_t, const float*, float*) {}

#endif

}  // namespace splitlearnd::packed_gemm
