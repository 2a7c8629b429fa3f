#include "manager/torchscript/outputs.h"

#include <string>

#include "manager/torchscript/convert.h"

namespace splitlearnd {
namespace {

bool IsCacheList(const c10::IValue& v) { return v.isList() && (v.toListRef().empty() || v.toListRef()[0].isTuple()); }

Status AppendKV(const c10::IValue& v, DType request_dtype, InferenceResult* result) {
  for (const auto& item : v.toListRef()) {
    if (!item.isTuple() || item.toTupleRef().elements().size() != 2) {
      return Internal("model returned a cache entry that is not a (key, value) pair");
    }
    const auto& kv = item.toTupleRef().elements();
    auto k = ToHost(kv[0].toTensor(), std::nullopt, request_dtype);
    auto val = ToHost(kv[1].toTensor(), std::nullopt, request_dtype);
    if (!k.ok()) return k.status();
    if (!val.ok()) return val.status();
    result->present_key_values.push_back(KVPair{std::move(*k), std::move(*val)});
  }
  return Status::Ok();
}

}  // namespace

bool Flatten(const c10::IValue& out, std::vector<at::Tensor>* flat) {
  if (out.isTensor()) {
    flat->push_back(out.toTensor());
    return true;
  }
  if (out.isTuple()) {
    for (const auto& e : out.toTupleRef().elements()) {
      if (e.isTensor()) flat->push_back(e.toTensor());
      else if (!(e.isList() || e.isNone())) return false;
      else if (e.isList() && e.toListRef().size() > 0) return false;  // a cache never merges
    }
    return true;
  }
  if (out.isTensorList()) {
    for (const auto& t : out.toTensorVector()) flat->push_back(t);
    return true;
  }
  if (out.isGenericDict()) {
    for (const auto& kv : out.toGenericDict()) {
      if (!kv.value().isTensor()) return false;
      flat->push_back(kv.value().toTensor());
    }
    return true;
  }
  return false;
}

bool ExtractCache(const c10::IValue& out, KVList* kv) {
  auto take = [&](const c10::IValue& v) {
    for (const auto& item : v.toListRef()) {
      const auto& e = item.toTupleRef().elements();
      kv->emplace_back(e[0].toTensor(), e[1].toTensor());
    }
    return true;
  };
  if (out.isTuple()) {
    for (const auto& e : out.toTupleRef().elements()) {
      if (IsCacheList(e)) return take(e);
    }
  } else if (out.isGenericDict()) {
    for (const auto& e : out.toGenericDict()) {
      if (e.value().isList()) return take(e.value());
    }
  }
  return false;
}

StatusOr<InferenceResult> CollectOutputs(const c10::IValue& out, const InferenceRequest& request,
                                         const std::vector<at::Tensor>* slices, bool with_cache) {
  const DType request_dtype = request.inputs.empty() ? DType::kFloat32 : request.inputs.front().tensor.dtype;
  InferenceResult result;
  size_t next_slice = 0;
  auto add = [&](const std::string& name, const at::Tensor& t) -> Status {
    auto h = ToHost(slices ? (*slices)[next_slice++] : t, request.output_dtype, request_dtype);
    if (!h.ok()) return h.status();
    result.outputs.push_back(NamedTensor{name, std::move(*h)});
    return Status::Ok();
  };
  auto add_cache = [&](const c10::IValue& v) -> Status {
    return with_cache ? AppendKV(v, request_dtype, &result) : Status::Ok();
  };
  if (out.isTensor()) {
    if (auto s = add("output", out.toTensor()); !s.ok()) return s;
  } else if (out.isTuple() || out.isTensorList()) {
    std::vector<c10::IValue> elems;
    if (out.isTuple()) {
      elems = out.toTupleRef().elements().vec();
    } else {
      for (const auto& t : out.toTensorVector()) elems.emplace_back(t);
    }
    for (size_t i = 0; i < elems.size(); ++i) {
      const auto& e = elems[i];
      if (e.isTensor()) {
        if (auto s = add("output_" + std::to_string(i), e.toTensor()); !s.ok()) return s;
      } else if (IsCacheList(e)) {
        if (auto s = add_cache(e); !s.ok()) return s;
      } else if (!e.isNone()) {
        return Internal("model output " + std::to_string(i) + " is neither a tensor nor a cache");
      }
    }
  } else if (out.isGenericDict()) {
    for (const auto& kv : out.toGenericDict()) {
      const std::string name = kv.key().isString() ? kv.key().toStringRef() : "output";
      if (kv.value().isTensor()) {
        if (auto s = add(name, kv.value().toTensor()); !s.ok()) return s;
      } else if (kv.value().isList()) {
        if (auto s = add_cache(kv.value()); !s.ok()) return s;
      }
    }
  } else {
    return Internal(std::string("model returned an unsupported value of type ") + out.tagKind());
  }
  if (result.outputs.empty()) return Internal("model returned no tensor");
  return result;
}

}  // namespace splitlearnd
