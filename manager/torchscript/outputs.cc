#include "manager/torchscript/outputs.h"

#include "manager/torchscript/convert.h"

namespace splitlearnd {
namespace {

bool IsCacheList(const c10::IValue& v) { return v.isList() && (v.toListRef().empty() || v.toListRef()[0].isTuple()); }

Status ReadCache(const c10::IValue& v, ModelOutput* out) {
  out->has_cache = true;
  if (v.toListRef().empty()) return Status::Ok();
  if (!out->cache.empty()) return Internal("model returned more than one cache");
  for (const auto& item : v.toListRef()) {
    if (!item.isTuple() || item.toTupleRef().elements().size() != 2 || !item.toTupleRef().elements()[0].isTensor() ||
        !item.toTupleRef().elements()[1].isTensor()) {
      return Internal("model returned a cache entry that is not a (key, value) pair");
    }
    const auto& kv = item.toTupleRef().elements();
    out->cache.emplace_back(kv[0].toTensor(), kv[1].toTensor());
  }
  return Status::Ok();
}

// One element of a tuple, list or dict.
Status ReadElement(const std::string& name, const c10::IValue& e, ModelOutput* out) {
  if (e.isTensor()) {
    out->names.push_back(name);
    out->tensors.push_back(e.toTensor());
    return Status::Ok();
  }
  if (IsCacheList(e)) return ReadCache(e, out);
  if (e.isNone()) return Status::Ok();
  return Internal("model output '" + name + "' is neither a tensor nor a cache");
}

}  // namespace

StatusOr<ModelOutput> ReadOutput(const c10::IValue& out) {
  ModelOutput result;
  if (out.isTensor()) {
    result.names.push_back("output");
    result.tensors.push_back(out.toTensor());
  } else if (out.isTuple() || out.isList()) {
    const auto elems = out.isTuple() ? out.toTupleRef().elements().vec() : out.toListRef().vec();
    for (size_t i = 0; i < elems.size(); ++i) {
      if (auto s = ReadElement("output_" + std::to_string(i), elems[i], &result); !s.ok()) return s;
    }
  } else if (out.isGenericDict()) {
    for (const auto& kv : out.toGenericDict()) {
      const std::string name = kv.key().isString() ? kv.key().toStringRef() : "output";
      if (auto s = ReadElement(name, kv.value(), &result); !s.ok()) return s;
    }
  } else {
    return Internal(std::string("model returned an unsupported value of type ") + out.tagKind());
  }
  if (result.tensors.empty()) return Internal("model returned no tensor");
  return result;
}

StatusOr<InferenceResult> CollectOutputs(const ModelOutput& out, const InferenceRequest& request,
                                         const std::vector<at::Tensor>* slices, bool with_cache) {
  const DType request_dtype = request.inputs.empty() ? DType::kFloat32 : request.inputs.front().tensor.dtype;
  InferenceResult result;
  for (size_t i = 0; i < out.tensors.size(); ++i) {
    auto h = ToHost(slices ? (*slices)[i] : out.tensors[i], request.output_dtype, request_dtype);
    if (!h.ok()) return h.status();
    result.outputs.push_back(NamedTensor{out.names[i], std::move(*h)});
  }
  if (!with_cache) return result;
  for (const auto& [key, value] : out.cache) {
    auto k = ToHost(key, std::nullopt, request_dtype);
    auto v = ToHost(value, std::nullopt, request_dtype);
    if (!k.ok()) return k.status();
    if (!v.ok()) return v.status();
    result.present_key_values.push_back(KVPair{std::move(*k), std::move(*v)});
  }
  return result;
}

}  // namespace splitlearnd
