// The AVX-512F kernel: RowsAvx512 (packed_gemm_internal.h). Each function carries its
// own target attribute, so the file builds with the project's flags and runs only where
// Supported(Isa::kAvx512) holds.
#include "manager/torchscript/packed_gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace splitlearnd::packed_gemm::detail {

namespace {

// A tile is up to 12 rows x two neighbouring panels (one 16-float register per row and
// panel), so each broadcast of x feeds two FMAs, as on AVX2. The two panels of a pair
// lie one after the other in the packed layout; the pair that follows is the next block
// of memory.
constexpr int64_t kRowsPerTile512 = 12;  // 24 accumulators of 32 registers

template <int Rows, int Width, Start S, bool Fetch = false>
__attribute__((target("avx512f"), always_inline)) inline void Tile512(const float* x, int64_t ldx,
                                                                     const float* panel, int64_t depth,
                                                                     float* y, int64_t ldy, const float* bias) {
  static_assert(Width == 1 || Width == 2, "a tile spans one or two panels");
  const int64_t panel_floats = depth * kPanelWidth;
  __m512 acc[Rows][Width];
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < Width; ++j) {
      if constexpr (S == Start::kAccumulate) {
        acc[r][j] = _mm512_loadu_ps(y + r * ldy + j * kPanelWidth);
      } else if constexpr (S == Start::kBias) {
        acc[r][j] = _mm512_loadu_ps(bias + j * kPanelWidth);
      } else {
        acc[r][j] = _mm512_setzero_ps();
      }
    }
  }
  const float* next = panel + Width * panel_floats;
  for (int64_t kk = 0; kk < depth; ++kk) {
    if constexpr (Fetch) {
#pragma GCC unroll 2
      for (int j = 0; j < Width; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(next + j * panel_floats + kk * kPanelWidth), _MM_HINT_T0);
      }
    }
    __m512 w[Width];
#pragma GCC unroll 2
    for (int j = 0; j < Width; ++j) w[j] = _mm512_loadu_ps(panel + j * panel_floats + kk * kPanelWidth);
#pragma GCC unroll 12
    for (int r = 0; r < Rows; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + kk]);
#pragma GCC unroll 2
      for (int j = 0; j < Width; ++j) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < Width; ++j) _mm512_storeu_ps(y + r * ldy + j * kPanelWidth, acc[r][j]);
  }
}

template <int Width, Start S>
__attribute__((target("avx512f"))) void RowsFrom512(const float* x, int64_t rows, int64_t ldx, const float* panel,
                                                   int64_t depth, float* y, int64_t ldy, const float* bias) {
  constexpr int64_t kTile = kRowsPerTile512;
  int64_t r = 0;
  if (rows >= kTile) {
    Tile512<kTile, Width, S, true>(x, ldx, panel, depth, y, ldy, bias);
    r = kTile;
  }
  for (; r + kTile <= rows; r += kTile) {
    Tile512<kTile, Width, S>(x + r * ldx, ldx, panel, depth, y + r * ldy, ldy, bias);
  }
  const float* xr = x + r * ldx;
  float* yr = y + r * ldy;
  // A block's only tile (a few rows: a lone request) fetches the next panels too.
  const bool alone = r == 0;
  switch (rows - r) {
#define SPLITLEARND_TILE512_CASE(n)                                          \
  case n:                                                                    \
    if (alone) {                                                             \
      Tile512<n, Width, S, true>(xr, ldx, panel, depth, yr, ldy, bias);      \
    } else {                                                                 \
      Tile512<n, Width, S>(xr, ldx, panel, depth, yr, ldy, bias);            \
    }                                                                        \
    break;
    SPLITLEARND_TILE512_CASE(11)
    SPLITLEARND_TILE512_CASE(10)
    SPLITLEARND_TILE512_CASE(9)
    SPLITLEARND_TILE512_CASE(8)
    SPLITLEARND_TILE512_CASE(7)
    SPLITLEARND_TILE512_CASE(6)
    SPLITLEARND_TILE512_CASE(5)
    SPLITLEARND_TILE512_CASE(4)
    SPLITLEARND_TILE512_CASE(3)
    SPLITLEARND_TILE512_CASE(2)
    SPLITLEARND_TILE512_CASE(1)
#undef SPLITLEARND_TILE512_CASE
    default: break;
  }
}

template <Start S>
void RowsStart(int width, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y,
               int64_t ldy, const float* bias) {
  if (width == 2) {
    RowsFrom512<2, S>(x, rows, ldx, panel, depth, y, ldy, bias);
  } else {
    RowsFrom512<1, S>(x, rows, ldx, panel, depth, y, ldy, bias);
  }
}

}  // namespace

// Without a target of its own on purpose: a callee with a wider target is never inlined
// into it, so each RowsFrom512<Width, S> stays one function, the tiles inlined into it.
void RowsAvx512(int width, Start start, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth,
                float* y, int64_t ldy, const float* bias) {
  switch (start) {
    case Start::kZero: RowsStart<Start::kZero>(width, x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kBias: RowsStart<Start::kBias>(width, x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kAccumulate: RowsStart<Start::kAccumulate>(width, x, rows, ldx, panel, depth, y, ldy, bias); break;
  }
}

}  // namespace splitlearnd::packed_gemm::detail

#endif  // defined(__x86_64__)
