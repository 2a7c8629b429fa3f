// The AVX2 + FMA kernel: RowsAvx2 (packed_gemm_internal.h). Each function carries its
// own target attribute, so the file builds with the project's flags and runs only where
// Supported(Isa::kAvx2) holds.
#include "manager/torchscript/packed_gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace splitlearnd::packed_gemm::detail {

namespace {

// A tile is up to 6 rows x one panel (two 8-float registers per row).
constexpr int64_t kRowsPerTile = 6;  // 12 accumulators of 16 registers

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

}  // namespace

// Without a target of its own on purpose: a callee with a wider target is never inlined
// into it, so each RowsFrom<S> stays one function, the tiles inlined into it.
void RowsAvx2(Start start, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y,
              int64_t ldy, const float* bias) {
  switch (start) {
    case Start::kZero: RowsFrom<Start::kZero>(x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kBias: RowsFrom<Start::kBias>(x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kAccumulate: RowsFrom<Start::kAccumulate>(x, rows, ldx, panel, depth, y, ldy, bias); break;
  }
}

}  // namespace splitlearnd::packed_gemm::detail

#endif  // defined(__x86_64__)
