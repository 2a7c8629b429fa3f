// Element types splitlearnd accepts on the wire, independent of protobuf and libtorch.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace splitlearnd {

// Values match the protocol's DType enum (proto/compute.proto).
enum class DType : int {
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kInt64 = 4,
  kInt32 = 5,
  kBool = 6,
};

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kInt64: return 8;
    case DType::kInt32: return 4;
    case DType::kBool: return 1;
  }
  return 0;
}

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt64: return "int64";
    case DType::kInt32: return "int32";
    case DType::kBool: return "bool";
  }
  return "?";
}

inline std::optional<DType> DTypeFromName(std::string_view n) {
  if (n == "float32" || n == "float") return DType::kFloat32;
  if (n == "float16" || n == "half") return DType::kFloat16;
  if (n == "bfloat16") return DType::kBFloat16;
  if (n == "int64" || n == "long") return DType::kInt64;
  if (n == "int32" || n == "int") return DType::kInt32;
  if (n == "bool") return DType::kBool;
  return std::nullopt;
}

}  // namespace splitlearnd
