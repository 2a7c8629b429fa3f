// Pack and PackedFloats (packed_gemm.h): a weight in the layout both kernels read.
#include "manager/torchscript/packed_gemm.h"

#include <algorithm>

#include "manager/torchscript/packed_gemm_internal.h"

namespace splitlearnd::packed_gemm {

using detail::kSliceK;
using detail::PanelOffset;
using detail::Panels;

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

}  // namespace splitlearnd::packed_gemm
