// How libtorch's errors become statuses: what a model throws while it runs, and why a
// file does not load. Both libtorch generations (1.13 and 2.x) word their messages
// differently; what is read from them is kept here.
#pragma once

#include <string>

#include "common/status.h"

namespace splitlearnd {

// The line that says what went wrong: the last non-empty one that is not libtorch's
// "Exception raised from <function> at <file>" note. A TorchScript error puts the
// interpreter's traceback, with the model's source code, before it.
std::string CauseLine(const std::string& what);

// An error thrown by a model's forward or backward. The input's fault
// (INVALID_ARGUMENT) when the cause is a complaint about shapes, sizes or dtypes, and
// never for an exception the model's own code raised (`raised_by_model`: TorchScript's
// `raise`, a torch::jit::JITException); anything else is INTERNAL.
Status ModelError(const std::string& what, bool raised_by_model = false);

// Why the TorchScript file `file` did not load, in one paragraph: for a file that calls
// an operator this libtorch lacks (a file from a newer PyTorch), the operator, the
// PyTorch that wrote the file when its archive says so, and what to do; otherwise the
// cause line. The full text (with TorchScript source) is left to the debug log.
Status TorchScriptLoadError(const std::string& file, const std::string& what);

// The PyTorch release that wrote the TorchScript archive `file`, as far as the archive
// tells: "" when it does not. Reads only the archive's small records.
std::string ArchiveProducer(const std::string& file);

}  // namespace splitlearnd
