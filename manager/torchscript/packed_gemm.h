// A float32 GEMM against a weight packed once, at load, for the CPU it runs on, on the
// calling thread or split by output columns over a few threads. libtorch-free: the
// adapter's packing pass (optimize.cc) is its only user.
//
// Why: OpenBLAS copies ("packs") the whole weight into its kernel's layout on every
// call. At the row counts a serving batch has (a few requests of a few rows each)
// that copy is a large share of a Linear layer's time: 768x768 at 40 rows, 16 % of a
// device worker's samples. Packing once at load removes it; the kernels
// (packed_gemm_avx2.cc, packed_gemm_avx512.cc) are the usual register-blocked ones,
// blocked for L1 over K and for L2 over M (packed_gemm.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace splitlearnd::packed_gemm {

// Output columns per packed panel (two 8-float AVX registers).
inline constexpr int64_t kPanelWidth = 16;

// True where this CPU can run Gemm (x86-64 with AVX2 and FMA).
bool Supported();

// The kernels Gemm has: AVX2+FMA (8-float registers) and AVX-512F (16-float
// registers, twice the work per instruction). Both read the same packed layout.
enum class Isa { kAvx2, kAvx512 };
bool Supported(Isa isa);
// AVX-512 where this CPU has it, else AVX2.
Isa BestIsa();

// Floats that Pack writes for a K x N weight: N rounded up to whole panels, times K.
std::size_t PackedFloats(int64_t k, int64_t n);

// Packs the K x N matrix B, element (k, n) at b[k * stride_k + n * stride_n], into
// panels of kPanelWidth columns (columns past N are zero), stored in the order Gemm
// reads them: K is cut into slices of up to 256 rows; each slice holds every panel's
// rows of that slice, panel after panel, so one call streams the weight front to back.
// `out` holds PackedFloats(k, n) floats, 32-byte aligned.
void Pack(const float* b, int64_t k, int64_t n, int64_t stride_k, int64_t stride_n, float* out);

// y (M x N, row-major, leading dimension N) = x (M x K, row-major) * B + bias, with
// B packed by Pack and bias (N floats) optional, by the `isa` kernel (requires
// Supported(isa)) on up to `threads` threads: the caller and helper threads of a pool
// shared by the process (started on first use), each computing a range of output
// panels. A call with less work than a few million multiply-adds, or too few panels
// to share, runs on the caller alone.
void Gemm(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, const float* bias, float* y,
          Isa isa = BestIsa(), int threads = 1);

}  // namespace splitlearnd::packed_gemm
