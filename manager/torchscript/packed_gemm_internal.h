// What packed_gemm's own files share, and nothing else includes: the packed layout's
// geometry, how a tile's accumulators start, and the entry points of the two kernels.
#pragma once

#include <cstdint>

#include "manager/torchscript/packed_gemm.h"

namespace splitlearnd::packed_gemm::detail {

// Depth of a K slice: one panel's slice (256 x 16 floats, 16 KiB) and six rows of x
// (6 KiB) stay in L1 while a tile runs (measured on a Zen 3 core at K = N = 768).
inline constexpr int64_t kSliceK = 256;

inline int64_t Panels(int64_t n) { return (n + kPanelWidth - 1) / kPanelWidth; }

// The packed layout, for Pack and Gemm alike: where panel p's rows of the K slice that
// starts at row k0 (and is `depth` rows deep) begin, in floats from the start.
inline int64_t PanelOffset(int64_t k0, int64_t depth, int64_t p, int64_t panels) {
  return (k0 * panels + p * depth) * kPanelWidth;
}

// How a tile's accumulators start: from zero, from the bias, or from what y holds
// (every K slice after the first).
enum class Start { kZero, kBias, kAccumulate };

// `rows` rows of x (leading dimension ldx) times the panel at `panel`, a K slice
// `depth` deep, into y (leading dimension ldy); bias is read only when start is kBias.
// Requires Supported(Isa::kAvx2).
void RowsAvx2(Start start, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y,
              int64_t ldy, const float* bias);

// The same over `width` (1 or 2) neighbouring panels. Requires Supported(Isa::kAvx512).
void RowsAvx512(int width, Start start, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth,
                float* y, int64_t ldy, const float* bias);

}  // namespace splitlearnd::packed_gemm::detail
