#include "daemon/codec.h"

#include "common/blockwise_int8.h"
#include "daemon/legacy_zlib.h"

#include <algorithm>
#include <limits>

namespace splitlearnd {
namespace pb = splitlearn::comm;

namespace {

StatusOr<DType> WireDType(int v, const std::string& what) {
  if (v == pb::DTYPE_UNSPECIFIED) return DType::kFloat32;
  if (v >= static_cast<int>(DType::kFloat32) && v <= static_cast<int>(DType::kBool)) return static_cast<DType>(v);
  return InvalidArgument(what + ": unknown dtype value " + std::to_string(v));
}

// FNV-1a over the parts that must agree for two requests to share a forward.
class KeyHasher {
 public:
  void Add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ b[i]) * 1099511628211ULL;
  }
  template <typename T>
  void Add(const T& v) { Add(&v, sizeof v); }
  void Add(const std::string& s) { Add(s.data(), s.size()); Add(s.size()); }
  uint64_t value() const { return h_ == 0 ? 1 : h_; }

 private:
  uint64_t h_ = 1469598103934665603ULL;
};

bool CheckName(const std::string& s, const Limits& limits) { return s.size() <= limits.max_id_bytes; }

// The shape checks every wire tensor passes, whatever its encoding.
template <typename ShapeField>
Status DecodeShape(const std::string& bytes, const ShapeField& shape, const Limits& limits, const std::string& what,
                   std::vector<int64_t>* out, int64_t* elements) {
  // No shape: a scalar, which has one element's bytes (plain or compressed); with no
  // bytes either there is no tensor at all.
  if (shape.size() == 0 && bytes.empty()) return InvalidArgument(what + ": shape is missing");
  if (shape.size() > limits.max_rank) {
    return InvalidArgument(what + ": " + std::to_string(shape.size()) + " dimensions, at most " +
                           std::to_string(limits.max_rank) + " allowed");
  }
  out->clear();
  out->reserve(shape.size());
  for (auto d : shape) {
    if (d < 0) return InvalidArgument(what + ": dimension " + std::to_string(d) + " is negative");
    out->push_back(static_cast<int64_t>(d));
  }
  if (!CheckedNumElements(*out, limits.max_elements, elements)) {
    return InvalidArgument(what + ": more than " + std::to_string(limits.max_elements) + " elements");
  }
  return Status::Ok();
}

// output_encoding and output_block_size of a request: the answer's int8 block size.
Status AnswerEncoding(int encoding, int32_t block, WireCodec* codec) {
  switch (encoding) {
    case pb::OUTPUT_ENCODING_PLAIN:
      if (block != 0) return InvalidArgument("output_block_size needs output_encoding INT8_BLOCKWISE");
      return Status::Ok();
    case pb::OUTPUT_ENCODING_INT8_BLOCKWISE:
      if (block < 0) return InvalidArgument("output_block_size is negative");
      codec->int8_block = block == 0 ? kDefaultInt8Block : block;
      return Status::Ok();
    default:
      return InvalidArgument("unknown output_encoding value " + std::to_string(encoding));
  }
}

}  // namespace

template <typename ShapeField>
Status DecodeTensor(const std::string& bytes, const ShapeField& shape, int dtype_value, const Limits& limits,
                    const std::string& what, HostTensor* out, WireCodec* codec) {
  auto dtype = WireDType(dtype_value, what);
  if (!dtype.ok()) return dtype.status();
  int64_t elements = 0;
  if (auto s = DecodeShape(bytes, shape, limits, what, &out->shape, &elements); !s.ok()) return s;
  const size_t expected = static_cast<size_t>(elements) * DTypeSize(*dtype);
  out->dtype = *dtype;
  if (bytes.size() == expected) {
    out->data = bytes.data();
    out->nbytes = bytes.size();
    return Status::Ok();
  }
  if (codec && LooksLikeZlib(bytes)) {
    std::shared_ptr<std::string> inflated;
    if (auto s = InflateExactly(bytes, expected, what, &inflated); !s.ok()) return s;
    out->data = inflated->data();
    out->nbytes = inflated->size();
    out->owner = std::move(inflated);
    codec->zlib = true;
    return Status::Ok();
  }
  return InvalidArgument(what + ": " + std::to_string(bytes.size()) + " bytes of data, shape and dtype " +
                         DTypeName(*dtype) + " need " + std::to_string(expected));
}

template Status DecodeTensor(const std::string&, const google::protobuf::RepeatedField<int32_t>&, int, const Limits&,
                             const std::string&, HostTensor*, WireCodec*);
template Status DecodeTensor(const std::string&, const google::protobuf::RepeatedField<int64_t>&, int, const Limits&,
                             const std::string&, HostTensor*, WireCodec*);

template <typename ShapeField>
Status DecodeInt8Tensor(const std::string& bytes, const ShapeField& shape, int dtype_value,
                        const pb::BlockwiseInt8& q, const Limits& limits, const std::string& what, HostTensor* out) {
  if (dtype_value != pb::DTYPE_UNSPECIFIED && dtype_value != pb::DTYPE_FLOAT32) {
    return InvalidArgument(what + ": int8 blockwise tensors are float32 (dtype value " + std::to_string(dtype_value) +
                           ")");
  }
  if (q.block_size() < 1) return InvalidArgument(what + ": int8 blockwise block_size must be at least 1");
  int64_t elements = 0;
  if (auto s = DecodeShape(bytes, shape, limits, what, &out->shape, &elements); !s.ok()) return s;
  auto values = std::make_shared<std::vector<float>>();
  if (auto s = DecodeBlockwiseInt8(bytes, q.scales().data(), static_cast<size_t>(q.scales_size()),
                                   static_cast<size_t>(q.block_size()), static_cast<size_t>(elements), what,
                                   values.get());
      !s.ok()) {
    return s;
  }
  out->dtype = DType::kFloat32;
  out->data = values->data();
  out->nbytes = values->size() * sizeof(float);
  out->owner = std::move(values);
  return Status::Ok();
}

template Status DecodeInt8Tensor(const std::string&, const google::protobuf::RepeatedField<int32_t>&, int,
                                 const pb::BlockwiseInt8&, const Limits&, const std::string&, HostTensor*);
template Status DecodeInt8Tensor(const std::string&, const google::protobuf::RepeatedField<int64_t>&, int,
                                 const pb::BlockwiseInt8&, const Limits&, const std::string&, HostTensor*);

namespace {

// A wire tensor: int8 blockwise when `q` is set, else plain (DecodeTensor, with the
// legacy zlib codec where `codec` is given).
template <typename ShapeField>
Status DecodeWire(const std::string& bytes, const ShapeField& shape, int dtype_value, const pb::BlockwiseInt8* q,
                  const Limits& limits, const std::string& what, HostTensor* out, WireCodec* codec = nullptr) {
  return q ? DecodeInt8Tensor(bytes, shape, dtype_value, *q, limits, what, out)
           : DecodeTensor(bytes, shape, dtype_value, limits, what, out, codec);
}

// A NamedTensor of the wire: a named input, or the gradient of a named output.
Status DecodeNamed(const pb::NamedTensor& t, const Limits& limits, const std::string& what, HostTensor* out) {
  return DecodeWire(t.data(), t.shape(), t.dtype(), t.has_int8_blockwise() ? &t.int8_blockwise() : nullptr, limits,
                    what, out);
}

}  // namespace

StatusOr<DecodedCompute> DecodeCompute(const pb::ComputeRequest& req, const Limits& limits) {
  DecodedCompute out;
  InferenceRequest& r = out.request;
  if (!CheckName(req.model_id(), limits)) return InvalidArgument("model_id is too long");
  if (req.has_forward_id() && !CheckName(req.forward_id(), limits)) return InvalidArgument("forward_id is too long");
  if (!CheckName(req.session_id(), limits)) return InvalidArgument("session_id is too long");
  r.session_id = req.session_id();
  r.training = req.training_mode();
  if (req.has_forward_id()) r.forward_id = req.forward_id();
  if (r.training && !r.session_id.empty()) return InvalidArgument("a training forward cannot use a session");
  if (r.training && req.past_key_values_size() > 0) {
    return InvalidArgument("a training forward cannot take past_key_values: gradients do not flow into a cache");
  }
  if (!r.session_id.empty() && req.past_key_values_size() > 0) {
    return InvalidArgument("a session step takes its cache from the session, not from past_key_values");
  }
  if (req.metadata_size() > limits.max_metadata_entries) return InvalidArgument("too many metadata entries");
  size_t meta_bytes = 0;
  for (const auto& [k, v] : req.metadata()) meta_bytes += k.size() + v.size();
  if (meta_bytes > limits.max_metadata_bytes) return InvalidArgument("metadata is too large");
  if (req.inputs_size() > limits.max_inputs) return InvalidArgument("too many named inputs");
  if (req.past_key_values_size() > limits.max_kv_entries) return InvalidArgument("too many past_key_values entries");

  const bool has_primary = !req.data().empty() || req.shape_size() > 0;
  if (!has_primary && req.inputs_size() == 0) return InvalidArgument("the request carries no tensor (data and shape are empty)");
  r.inputs.reserve(req.inputs_size() + 1);
  if (has_primary) {
    NamedTensor t;
    if (auto s = DecodeWire(req.data(), req.shape(), req.dtype(),
                            req.has_data_int8_blockwise() ? &req.data_int8_blockwise() : nullptr, limits, "data",
                            &t.tensor, &out.codec);
        !s.ok()) {
      return s;
    }
    r.inputs.push_back(std::move(t));
  }
  for (int i = 0; i < req.inputs_size(); ++i) {
    const auto& in = req.inputs(i);
    if (!CheckName(in.name(), limits)) return InvalidArgument("inputs[" + std::to_string(i) + "]: name is too long");
    NamedTensor t;
    t.name = in.name();
    const std::string what = in.name().empty() ? "inputs[" + std::to_string(i) + "]" : "input '" + in.name() + "'";
    if (auto s = DecodeNamed(in, limits, what, &t.tensor); !s.ok()) return s;
    for (const auto& prev : r.inputs) {
      if (!t.name.empty() && prev.name == t.name) return InvalidArgument(what + " is given twice");
    }
    r.inputs.push_back(std::move(t));
  }

  r.use_cache = req.use_cache();
  for (int i = 0; i < req.past_key_values_size(); ++i) {
    const auto& e = req.past_key_values(i);
    const std::string what = "past_key_values[" + std::to_string(i) + "]";
    KVPair kv;
    WireCodec kv_codec;  // the cache may come compressed too; the answer follows `data`
    if (auto s = DecodeWire(e.key_data(), e.key_shape(), e.dtype(),
                            e.has_key_int8_blockwise() ? &e.key_int8_blockwise() : nullptr, limits, what + ".key",
                            &kv.key, &kv_codec);
        !s.ok()) {
      return s;
    }
    if (auto s = DecodeWire(e.value_data(), e.value_shape(), e.dtype(),
                            e.has_value_int8_blockwise() ? &e.value_int8_blockwise() : nullptr, limits,
                            what + ".value", &kv.value, &kv_codec);
        !s.ok()) {
      return s;
    }
    if (kv.key.shape.size() != 4 || kv.value.shape.size() != 4) {
      return InvalidArgument(what + ": key and value must be [batch, heads, seq_len, head_dim]");
    }
    if (!std::equal(kv.key.shape.begin(), kv.key.shape.begin() + 3, kv.value.shape.begin())) {
      return InvalidArgument(what + ": key and value disagree on batch, heads or seq_len");
    }
    if (!r.past_key_values.empty() && (kv.key.shape != r.past_key_values.front().key.shape ||
                                       kv.value.shape != r.past_key_values.front().value.shape)) {
      return InvalidArgument(what + ": shape differs from past_key_values[0]");
    }
    r.past_key_values.push_back(std::move(kv));
  }
  if (req.output_dtype() != pb::DTYPE_UNSPECIFIED) {
    auto dt = WireDType(req.output_dtype(), "output_dtype");
    if (!dt.ok()) return dt.status();
    r.output_dtype = *dt;
  }
  if (r.output_dtype && *r.output_dtype != DType::kFloat32 &&
      req.output_encoding() == pb::OUTPUT_ENCODING_INT8_BLOCKWISE) {
    return InvalidArgument("int8 blockwise answers are float32; output_dtype asks for " +
                           std::string(DTypeName(*r.output_dtype)));
  }
  if (auto s = AnswerEncoding(req.output_encoding(), req.output_block_size(), &out.codec); !s.ok()) return s;

  // Batching key: requests merge only when every input agrees on name, dtype and
  // trailing dimensions and all inputs share dim 0. Cache and training never merge.
  const bool mergeable = !r.use_cache && r.past_key_values.empty() && !r.training && r.session_id.empty();
  const auto& first = r.inputs.front().tensor.shape;
  out.rows = first.empty() ? 0 : first.front();
  // A scalar or an empty batch runs alone: there is nothing to split it back from.
  bool rows_split = out.rows > 0;
  for (const auto& in : r.inputs) rows_split = rows_split && !in.tensor.shape.empty();
  if (mergeable && rows_split) {
    KeyHasher h;
    h.Add(r.output_dtype ? static_cast<int>(*r.output_dtype) : 0);
    bool same_rows = true;
    for (const auto& in : r.inputs) {
      same_rows = same_rows && in.tensor.shape.front() == out.rows;
      h.Add(in.name);
      h.Add(static_cast<int>(in.tensor.dtype));
      h.Add(in.tensor.shape.size());
      for (size_t d = 1; d < in.tensor.shape.size(); ++d) h.Add(in.tensor.shape[d]);
    }
    if (same_rows) out.batch_key = h.value();
  }
  return out;
}

namespace {

// One copy into the response: set_data(ptr, n) in this protobuf builds a temporary
// string first, which doubles the cost of large outputs.
void AssignBytes(std::string* out, const void* data, size_t n) { out->assign(static_cast<const char*>(data), n); }

template <typename ShapeField>
Status CopyShape(const std::vector<int64_t>& shape, ShapeField* field) {
  field->Reserve(static_cast<int>(shape.size()));
  for (int64_t d : shape) {
    if (d > std::numeric_limits<int32_t>::max()) {
      return Internal("output dimension " + std::to_string(d) + " does not fit the protocol's int32 shape");
    }
    field->Add(static_cast<int32_t>(d));
  }
  return Status::Ok();
}

// Writes `t` int8 blockwise when `block` > 0 and it is float32 with finite values;
// false: it goes plain (the caller writes it).
bool EncodeInt8(const HostTensor& t, int block, std::string* data, pb::BlockwiseInt8* q) {
  if (block <= 0 || t.dtype != DType::kFloat32) return false;
  auto enc = EncodeBlockwiseInt8(static_cast<const float*>(t.data), t.nbytes / sizeof(float),
                                 static_cast<size_t>(block));
  if (!enc.ok()) return false;  // NaN or infinity: only the plain bytes carry them
  data->assign(reinterpret_cast<const char*>(enc->codes.data()), enc->codes.size());
  q->set_block_size(block);
  q->mutable_scales()->Add(enc->scales.begin(), enc->scales.end());
  return true;
}

}  // namespace

StatusOr<DecodedBackward> DecodeBackward(const pb::BackwardRequest& req, const Limits& limits) {
  DecodedBackward decoded;
  BackwardRequest& out = decoded.request;
  if (req.forward_id().empty()) return InvalidArgument("forward_id is empty");
  if (!CheckName(req.forward_id(), limits)) return InvalidArgument("forward_id is too long");
  if (req.has_model_id() && !CheckName(req.model_id(), limits)) return InvalidArgument("model_id is too long");
  out.forward_id = req.forward_id();
  if (auto s = DecodeWire(req.grad_output_data(), req.grad_output_shape(), req.dtype(),
                          req.has_grad_output_int8_blockwise() ? &req.grad_output_int8_blockwise() : nullptr, limits,
                          "grad_output", &out.grad_output, &decoded.codec);
      !s.ok()) {
    return s;
  }
  if (req.grad_outputs_size() > limits.max_inputs) return InvalidArgument("too many grad_outputs");
  for (int i = 0; i < req.grad_outputs_size(); ++i) {
    const auto& g = req.grad_outputs(i);
    if (g.name().empty()) return InvalidArgument("grad_outputs[" + std::to_string(i) + "] has no name");
    if (!CheckName(g.name(), limits)) return InvalidArgument("grad_outputs[" + std::to_string(i) + "]: name is too long");
    NamedTensor t;
    t.name = g.name();
    const std::string what = "grad_output '" + g.name() + "'";
    if (auto s = DecodeNamed(g, limits, what, &t.tensor); !s.ok()) return s;
    for (const auto& prev : out.named_grad_outputs) {
      if (prev.name == t.name) return InvalidArgument(what + " is given twice");
    }
    out.named_grad_outputs.push_back(std::move(t));
  }
  if (auto s = AnswerEncoding(req.output_encoding(), req.output_block_size(), &decoded.codec); !s.ok()) return s;
  if (req.has_learning_rate()) {
    if (!(req.learning_rate() >= 0) || req.learning_rate() > 1e6) return InvalidArgument("learning_rate is out of range");
    out.learning_rate = req.learning_rate();
  }
  if (req.has_accumulation_step()) {
    if (req.accumulation_step() < 1 || req.accumulation_step() > 1 << 20) {
      return InvalidArgument("accumulation_step must be at least 1");
    }
    out.accumulation_steps = req.accumulation_step();
  }
  return decoded;
}

Status EncodeCompute(const InferenceResult& result, pb::ComputeResponse* resp, const WireCodec& codec) {
  if (result.outputs.empty()) return Internal("model returned no output");
  // The legacy fields in the request's own codec; extension fields are always plain.
  auto legacy_bytes = [&](std::string* out, const HostTensor& t) {
    if (codec.zlib) DeflateInto(t.data, t.nbytes, out);
    else AssignBytes(out, t.data, t.nbytes);
  };
  const HostTensor& primary = result.outputs.front().tensor;
  if (!EncodeInt8(primary, codec.int8_block, resp->mutable_data(), resp->mutable_data_int8_blockwise())) {
    resp->clear_data_int8_blockwise();
    legacy_bytes(resp->mutable_data(), primary);
  }
  if (auto s = CopyShape(primary.shape, resp->mutable_shape()); !s.ok()) return s;
  resp->set_dtype(static_cast<pb::DType>(primary.dtype));
  for (size_t i = 1; i < result.outputs.size(); ++i) {
    const NamedTensor& o = result.outputs[i];
    auto* t = resp->add_outputs();
    t->set_name(o.name);
    if (!EncodeInt8(o.tensor, codec.int8_block, t->mutable_data(), t->mutable_int8_blockwise())) {
      t->clear_int8_blockwise();
      AssignBytes(t->mutable_data(), o.tensor.data, o.tensor.nbytes);
    }
    t->mutable_shape()->Add(o.tensor.shape.begin(), o.tensor.shape.end());
    t->set_dtype(static_cast<pb::DType>(o.tensor.dtype));
  }
  for (const KVPair& kv : result.present_key_values) {
    auto* e = resp->add_present_key_values();
    if (!EncodeInt8(kv.key, codec.int8_block, e->mutable_key_data(), e->mutable_key_int8_blockwise())) {
      e->clear_key_int8_blockwise();
      legacy_bytes(e->mutable_key_data(), kv.key);
    }
    if (!EncodeInt8(kv.value, codec.int8_block, e->mutable_value_data(), e->mutable_value_int8_blockwise())) {
      e->clear_value_int8_blockwise();
      legacy_bytes(e->mutable_value_data(), kv.value);
    }
    if (auto s = CopyShape(kv.key.shape, e->mutable_key_shape()); !s.ok()) return s;
    if (auto s = CopyShape(kv.value.shape, e->mutable_value_shape()); !s.ok()) return s;
    e->set_dtype(static_cast<pb::DType>(kv.key.dtype));
  }
  if (!result.forward_id.empty()) resp->set_forward_id(result.forward_id);
  if (!result.session_id.empty()) resp->set_session_id(result.session_id);
  if (result.session_tokens >= 0) resp->set_session_tokens(result.session_tokens);
  return Status::Ok();
}

Status EncodeBackward(const InferenceResult& result, pb::BackwardResponse* resp, const WireCodec& codec) {
  if (result.outputs.empty()) return Internal("backward returned no gradient");
  const HostTensor& g = result.outputs.front().tensor;
  if (!EncodeInt8(g, codec.int8_block, resp->mutable_grad_input_data(), resp->mutable_grad_input_int8_blockwise())) {
    resp->clear_grad_input_int8_blockwise();
    if (codec.zlib) DeflateInto(g.data, g.nbytes, resp->mutable_grad_input_data());
    else AssignBytes(resp->mutable_grad_input_data(), g.data, g.nbytes);
  }
  if (auto s = CopyShape(g.shape, resp->mutable_grad_input_shape()); !s.ok()) return s;
  resp->set_dtype(static_cast<pb::DType>(g.dtype));
  return Status::Ok();
}

}  // namespace splitlearnd
