// Thread and BLAS control for the models of the adapter: libtorch's intra- and
// inter-op pools and OpenBLAS's own pool (docs/threading.md). Process-wide state,
// set once by ConfigureTorchThreads (torchscript.h) and read by every model.
#pragma once

#include <string>

namespace splitlearnd {

// The intra-op thread count ConfigureTorchThreads set (1 until then).
int IntraOpThreads();

// The OpenBLAS thread count for the next multiplies: the device worker switches it
// between models that set their own (models[].blas_threads). n <= 0: the process's
// count (ConfigureTorchThreads', else what OpenBLAS started with).
void UseBlasThreads(int n);

// "OpenBLAS <config>", or a note that the reference BLAS is in use.
std::string BlasName();

}  // namespace splitlearnd
