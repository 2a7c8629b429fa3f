#include "manager/torchscript/packed_gemm.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
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

// Blocking: 96 rows of x per K slice (96 KiB) stay in L2 while every panel passes
// over them.
constexpr int64_t kBlockM = 96;

// How a tile's accumulators start: from zero, from the bias, or from what y holds
// (every K slice after the first).
enum class Start { kZero, kBias, kAccumulate };

// ---- AVX2: a tile is up to 6 rows x one panel (two 8-float registers per row).
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

// ---- AVX-512: a tile is up to 12 rows x two neighbouring panels (one 16-float
// register per row and panel), so each broadcast of x feeds two FMAs, as on AVX2. The
// two panels of a pair lie one after the other in the packed layout; the pair that
// follows is the next block of memory.
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

// Rows of x times `width` neighbouring panels (1 or 2; AVX2 takes one at a time).
template <Start S>
void RowsStart(Isa isa, int width, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth,
               float* y, int64_t ldy, const float* bias) {
  if (isa == Isa::kAvx512) {
    if (width == 2) {
      RowsFrom512<2, S>(x, rows, ldx, panel, depth, y, ldy, bias);
    } else {
      RowsFrom512<1, S>(x, rows, ldx, panel, depth, y, ldy, bias);
    }
  } else {
    RowsFrom<S>(x, rows, ldx, panel, depth, y, ldy, bias);
  }
}

void Rows(Isa isa, int width, const float* x, int64_t rows, int64_t ldx, const float* panel, int64_t depth, float* y,
          int64_t ldy, Start start, const float* bias) {
  switch (start) {
    case Start::kZero: RowsStart<Start::kZero>(isa, width, x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kBias: RowsStart<Start::kBias>(isa, width, x, rows, ldx, panel, depth, y, ldy, bias); break;
    case Start::kAccumulate:
      RowsStart<Start::kAccumulate>(isa, width, x, rows, ldx, panel, depth, y, ldy, bias);
      break;
  }
}

}  // namespace

namespace {

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

// Polls `ready` with a CPU pause between tries for up to 50 microseconds; true if it
// turned true. Cheaper than sleeping when the wait is short: waking a sleeping thread
// costs tens of microseconds on a VM.
template <typename Ready>
bool PollBriefly(const Ready& ready) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  for (uint32_t i = 1; !ready(); ++i) {
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return false;
    _mm_pause();
  }
  return true;
}

// Helper threads for Gemm's `threads` > 1, shared by the process and started on first
// use. A call queues its parts, runs the first itself, takes back any part no helper
// has started, and then waits for the rest. A helper that finishes a part polls for the
// next one for a little while before it sleeps: a forward's Linear layers come a few
// microseconds apart, and waking a sleeping thread costs tens of microseconds on a VM.
class HelperPool {
 public:
  static HelperPool& Get() {
    static HelperPool pool;
    return pool;
  }

  // Runs part(i) for i in [0, parts), part 0 on the calling thread.
  template <typename Fn>
  void Run(int parts, const Fn& part) {
    Call call;
    call.pending.store(parts - 1, std::memory_order_relaxed);
    call.fn = [](const void* f, int i) { (*static_cast<const Fn*>(f))(i); };
    call.arg = &part;
    {
      std::lock_guard<std::mutex> lock(mu_);
      EnsureThreads(parts - 1);
      for (int i = 1; i < parts; ++i) queue_.push_back(Task{&call, i});
      queued_.store(queue_.size(), std::memory_order_release);
    }
    cv_.notify_all();
    part(0);  // GemmPanels allocates nothing and does not throw
    // Parts no helper has taken yet run here, rather than waiting for a helper to wake.
    while (true) {
      Task task{};
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Task& t) { return t.call == &call; });
        if (it == queue_.end()) break;
        task = *it;
        queue_.erase(it);
        queued_.store(queue_.size(), std::memory_order_release);
      }
      Finish(task);
    }
    // The helpers' parts take about as long as this thread's: poll a little, then sleep.
    PollBriefly([&] { return call.pending.load(std::memory_order_acquire) == 0; });
    std::unique_lock<std::mutex> lock(call.mu);
    call.done.wait(lock, [&] { return call.pending.load(std::memory_order_acquire) == 0; });
  }

  ~HelperPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  struct Call {
    void (*fn)(const void*, int) = nullptr;
    const void* arg = nullptr;
    std::atomic<int> pending{0};
    std::mutex mu;
    std::condition_variable done;
  };
  struct Task {
    Call* call;
    int part;
  };

  static void Finish(const Task& task) {
    task.call->fn(task.call->arg, task.part);
    // Under the call's lock: the caller returns (and its Call goes away) only after
    // taking that lock and seeing no part pending, so no helper touches it after.
    std::lock_guard<std::mutex> lock(task.call->mu);
    if (task.call->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) task.call->done.notify_one();
  }

  void EnsureThreads(int n) {  // with mu_ held
    while (static_cast<int>(threads_.size()) < n) threads_.emplace_back([this] { Loop(); });
  }

  void Loop() {
    pthread_setname_np(pthread_self(), "sld-gemm");
    while (true) {
      PollBriefly([this] { return queued_.load(std::memory_order_acquire) > 0; });
      Task task{};
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        task = queue_.front();
        queue_.pop_front();
        queued_.store(queue_.size(), std::memory_order_release);
      }
      Finish(task);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  std::atomic<size_t> queued_{0};
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

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
  HelperPool::Get().Run(static_cast<int>(parts), [&](int i) {
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
