// AOTInductor packages (`.pt2`, made by torch.export and
// torch._inductor.aoti_compile_and_package) as Models: inference only, with dynamic
// batching across the package's dynamic batch dimension. Needs libtorch 2.6 or later
// (torch::inductor::AOTIModelPackageLoader); elsewhere every load is refused with a
// message that names the libtorch it needs. libtorch-free header.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "manager/model.h"

namespace splitlearnd {

// True where this build can load AOTInductor packages.
bool AotInductorAvailable();

// Why this build cannot load AOTInductor packages ("" where it can).
std::string AotInductorUnavailableReason();

// Whether `path` names an AOTInductor package (its file name ends in .pt2).
bool IsAotInductorPackage(const std::string& path);

// Loads config.path, an AOTInductor package, for config.device. Training and sessions
// are refused (the package holds no backward and takes no cache); so are packages
// compiled for another device type and packages without `splitlearnd.inputs`
// metadata (aoti_spec.h).
StatusOr<std::shared_ptr<Model>> LoadAotInductorModel(const ModelConfig& config);

}  // namespace splitlearnd
