// See threads.h.
#include "manager/torchscript/threads.h"

#include <dlfcn.h>
#include <sched.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "common/cpus.h"
#include "manager/torchscript/optimize.h"
#include "manager/torchscript/torchscript.h"

namespace splitlearnd {
namespace {

std::once_flag g_threads_once;
std::atomic<int> g_intra{1};
std::atomic<int> g_inter{1};
std::atomic<int> g_blas{0};

// The CPUs the process was started on (systemd's CPUAffinity=, taskset, a cpuset), not
// every CPU of the host: OpenBLAS's pool is sized to them when no count is set.
int HardwareThreads() {
  const size_t n = AllowedCpus().size();
  return n > 0 ? static_cast<int>(n) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// OpenBLAS sizes its own pool at load time; it can be resized through this symbol,
// which libblas.so.3 exports when the OpenBLAS alternative is selected.
bool SetBlasThreads(int n) {
  using Fn = void (*)(int);
  static const auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!fn) return false;
  fn(n);
  return true;
}

// OpenBLAS starts its helper threads when it loads, before the daemon can pin anything;
// openblas_setaffinity() moves helper `i` (the last index is the calling thread itself).
void PinBlasHelpers(int threads, const std::vector<int>& cpus) {
  using Fn = int (*)(int, size_t, cpu_set_t*);
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_setaffinity"));
  if (!fn || cpus.empty()) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  for (int i = 0; i + 1 < threads; ++i) fn(i, sizeof set, &set);
}

}  // namespace

int IntraOpThreads() { return g_intra.load(); }

// openblas_set_num_threads only stores the number while it does not exceed the threads
// already started.
void UseBlasThreads(int n) {
  static std::atomic<int> current{0};
  static const int initial = OpenBlasThreads();
  if (n <= 0) n = g_blas.load() > 0 ? g_blas.load() : initial;
  if (n <= 0 || current.load(std::memory_order_relaxed) == n) return;
  if (SetBlasThreads(n)) current.store(n, std::memory_order_relaxed);
}

std::string BlasName() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  return fn ? std::string("OpenBLAS ") + fn() : "reference BLAS (OpenBLAS not found: install libopenblas0-pthread)";
}

void ConfigureTorchThreads(const ThreadSettings& settings) {
  std::call_once(g_threads_once, [&] {
    g_intra = settings.intra_op_threads > 0 ? settings.intra_op_threads : 1;
    g_inter = settings.inter_op_threads > 0 ? settings.inter_op_threads : 1;
    g_blas = settings.blas_threads > 0 ? settings.blas_threads : HardwareThreads();
    at::set_num_threads(g_intra);
    try {
      at::set_num_interop_threads(g_inter);
    } catch (const c10::Error&) {
      // The inter-op pool was already started; its size stays.
    }
    SetBlasThreads(g_blas);
    PinBlasHelpers(g_blas, settings.blas_cpus);
  });
}

ThreadSettings EffectiveTorchThreads() {
  ThreadSettings t;
  t.intra_op_threads = g_intra.load();
  t.inter_op_threads = g_inter.load();
  t.blas_threads = g_blas.load();
  return t;
}

}  // namespace splitlearnd
