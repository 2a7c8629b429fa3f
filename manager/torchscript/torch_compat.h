// What differs between the libtorch generations splitlearnd builds against (Debian 12's
// 1.13, Debian 13's 2.6, upstream 2.x): the one place that says so. Everything else
// uses the names defined here.
#pragma once

#include <torch/version.h>

// AOTInductor packages: libtorch 2.6 has AOTIModelPackageLoader with the package-path
// constructor used by aoti_model.cc.
#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6))
#define SPLITLEARND_HAVE_AOTI 1
#else
#define SPLITLEARND_HAVE_AOTI 0
#endif
