// See aoti_spec.h.
#include "manager/torchscript/aoti_spec.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <sstream>

namespace splitlearnd {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(s);
  while (std::getline(in, part, sep)) parts.push_back(part);
  if (!s.empty() && s.back() == sep) parts.emplace_back();
  return parts;
}

bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::strtoll(s.c_str(), nullptr, 10);
  return true;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

StatusOr<std::vector<AotiInput>> ParseAotiInputs(const std::string& text) {
  std::vector<AotiInput> spec;
  std::map<std::string, std::pair<int64_t, int64_t>> ranges;
  for (const std::string& item : Split(text, ';')) {
    const auto fields = Split(item, ':');
    if (fields.size() != 3 || fields[0].empty()) {
      return InvalidArgument("splitlearnd.inputs: '" + item + "' is not name:dtype:shape");
    }
    AotiInput in;
    in.name = fields[0];
    const auto dtype = DTypeFromName(fields[1]);
    if (!dtype) return InvalidArgument("splitlearnd.inputs: input '" + in.name + "' has unknown dtype '" + fields[1] + "'");
    in.dtype = *dtype;
    if (!fields[2].empty()) {
      for (const std::string& d : Split(fields[2], 'x')) {
        AotiDim dim;
        const size_t eq = d.find('=');
        const size_t dots = d.find("..");
        if (eq == std::string::npos) {
          if (!ParseInt(d, &dim.size)) {
            return InvalidArgument("splitlearnd.inputs: input '" + in.name + "' has a bad dimension '" + d + "'");
          }
        } else if (eq == 0 || dots == std::string::npos || dots < eq || !ParseInt(d.substr(eq + 1, dots - eq - 1), &dim.min) ||
                   !ParseInt(d.substr(dots + 2), &dim.max) || dim.min > dim.max) {
          return InvalidArgument("splitlearnd.inputs: input '" + in.name + "' has a bad dynamic dimension '" + d +
                                 "' (write SYMBOL=MIN..MAX)");
        } else {
          dim.symbol = d.substr(0, eq);
          auto [it, added] = ranges.emplace(dim.symbol, std::make_pair(dim.min, dim.max));
          if (!added && it->second != std::make_pair(dim.min, dim.max)) {
            return InvalidArgument("splitlearnd.inputs: dimension " + dim.symbol + " has two ranges");
          }
        }
        in.dims.push_back(dim);
      }
    }
    spec.push_back(std::move(in));
  }
  if (spec.empty()) return InvalidArgument("splitlearnd.inputs is empty");
  return spec;
}

Status CheckAotiArgs(const std::vector<AotiInput>& spec, const std::vector<AotiArg>& args) {
  if (args.size() != spec.size()) {
    return InvalidArgument("the model takes " + std::to_string(spec.size()) + " input(s), the request has " +
                           std::to_string(args.size()));
  }
  std::map<std::string, int64_t> bound;
  for (size_t i = 0; i < spec.size(); ++i) {
    const AotiInput& s = spec[i];
    const AotiArg& a = args[i];
    const std::string who = "input '" + s.name + "'";
    if (a.dtype != s.dtype) {
      return InvalidArgument(who + " must be " + DTypeName(s.dtype) + ", not " + DTypeName(a.dtype));
    }
    if (a.shape.size() != s.dims.size()) {
      return InvalidArgument(who + " must have " + std::to_string(s.dims.size()) + " dimension(s); shape " +
                             ShapeText(a.shape) + " has " + std::to_string(a.shape.size()));
    }
    for (size_t d = 0; d < s.dims.size(); ++d) {
      const AotiDim& dim = s.dims[d];
      const int64_t n = a.shape[d];
      if (dim.symbol.empty()) {
        if (n != dim.size) {
          return InvalidArgument(who + ": dimension " + std::to_string(d) + " must be " + std::to_string(dim.size) +
                                 ", shape " + ShapeText(a.shape) + " has " + std::to_string(n));
        }
        continue;
      }
      if (n < dim.min || n > dim.max) {
        return InvalidArgument(who + ": dimension " + std::to_string(d) + " (" + dim.symbol + ") must be " +
                               std::to_string(dim.min) + ".." + std::to_string(dim.max) + ", shape " +
                               ShapeText(a.shape) + " has " + std::to_string(n));
      }
      auto [it, added] = bound.emplace(dim.symbol, n);
      if (!added && it->second != n) {
        return InvalidArgument(who + ": dimension " + std::to_string(d) + " (" + dim.symbol + ") is " +
                               std::to_string(n) + " but another input has " + dim.symbol + " = " +
                               std::to_string(it->second));
      }
    }
  }
  return Status::Ok();
}

int64_t AotiMaxBatchRows(const std::vector<AotiInput>& spec) {
  std::string symbol;
  int64_t max = 0;
  for (const AotiInput& in : spec) {
    if (in.dims.empty() || in.dims[0].symbol.empty()) return 0;
    if (!symbol.empty() && in.dims[0].symbol != symbol) return 0;
    symbol = in.dims[0].symbol;
    max = in.dims[0].max;
  }
  // The batch symbol must not size any other dimension, or merging would change it.
  for (const AotiInput& in : spec) {
    for (size_t d = 1; d < in.dims.size(); ++d) {
      if (in.dims[d].symbol == symbol) return 0;
    }
  }
  return max;
}

std::string FormatAotiInputs(const std::vector<AotiInput>& spec) {
  std::string s;
  for (const AotiInput& in : spec) {
    if (!s.empty()) s += ';';
    s += in.name + ":" + DTypeName(in.dtype) + ":";
    for (size_t d = 0; d < in.dims.size(); ++d) {
      if (d) s += 'x';
      const AotiDim& dim = in.dims[d];
      s += dim.symbol.empty() ? std::to_string(dim.size)
                              : dim.symbol + "=" + std::to_string(dim.min) + ".." + std::to_string(dim.max);
    }
  }
  return s;
}

}  // namespace splitlearnd
