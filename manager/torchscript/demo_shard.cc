#include "manager/torchscript/demo_shard.h"

#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "common/files.h"

namespace splitlearnd {
namespace {

std::string TransformerSource(const ShardSpec& s) {
  std::ostringstream src;
  const int head_dim = s.hidden / s.heads;
  src << "def forward(self, hidden_states: Tensor) -> Tensor:\n"
      << "    x = hidden_states\n"
      << "    B = x.size(0)\n"
      << "    T = x.size(1)\n";
  if (s.causal) src << "    mask = torch.triu(torch.full([T, T], float('-inf'), dtype=x.dtype, device=x.device), 1)\n";
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "self.l" + std::to_string(l) + "_";
    src << "    h = torch.layer_norm(x, [" << s.hidden << "], " << p << "ln1_w, " << p << "ln1_b, 1e-5)\n"
        << "    qkv = torch.linear(h, " << p << "qkv_w, " << p << "qkv_b)\n"
        << "    q = qkv.narrow(-1, 0, " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    k = qkv.narrow(-1, " << s.hidden << ", " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    v = qkv.narrow(-1, " << 2 * s.hidden << ", " << s.hidden << ").reshape(B, T, " << s.heads << ", " << head_dim << ").transpose(1, 2)\n"
        << "    att = torch.matmul(q, k.transpose(-2, -1)) * " << 1.0 / std::sqrt(static_cast<double>(head_dim)) << "\n";
    if (s.causal) src << "    att = att + mask\n";
    src << "    att = torch.softmax(att, -1)\n"
        << "    y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, " << s.hidden << ")\n"
        << "    x = x + torch.linear(y, " << p << "proj_w, " << p << "proj_b)\n"
        << "    h = torch.layer_norm(x, [" << s.hidden << "], " << p << "ln2_w, " << p << "ln2_b, 1e-5)\n"
        << "    x = x + torch.linear(torch.gelu(torch.linear(h, " << p << "fc1_w, " << p << "fc1_b)), " << p << "fc2_w, " << p << "fc2_b)\n";
  }
  src << "    return x\n";
  return src.str();
}

torch::jit::Module MakeShard(const ShardSpec& spec) {
  const int64_t d = spec.hidden;
  auto w = [](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
  switch (spec.kind) {
    case ShardSpec::Kind::kIdentity: {
      torch::jit::Module m("IdentityShard");
      m.define("def forward(self, x: Tensor) -> Tensor:\n    return x\n");
      return m;
    }
    case ShardSpec::Kind::kTiny: {
      torch::jit::Module m("TinyShard");
      m.register_parameter("w", w({d, d}), false);
      m.register_parameter("b", torch::zeros({d}), false);
      m.define("def forward(self, x: Tensor) -> Tensor:\n    return torch.gelu(torch.linear(x, self.w, self.b))\n");
      return m;
    }
    case ShardSpec::Kind::kTransformer:
      break;
  }
  torch::jit::Module m("TransformerTrunk");
  for (int l = 0; l < spec.layers; ++l) {
    const std::string p = "l" + std::to_string(l) + "_";
    m.register_parameter(p + "ln1_w", torch::ones({d}), false);
    m.register_parameter(p + "ln1_b", torch::zeros({d}), false);
    m.register_parameter(p + "qkv_w", w({3 * d, d}), false);
    m.register_parameter(p + "qkv_b", torch::zeros({3 * d}), false);
    m.register_parameter(p + "proj_w", w({d, d}), false);
    m.register_parameter(p + "proj_b", torch::zeros({d}), false);
    m.register_parameter(p + "ln2_w", torch::ones({d}), false);
    m.register_parameter(p + "ln2_b", torch::zeros({d}), false);
    m.register_parameter(p + "fc1_w", w({spec.ffn, d}), false);
    m.register_parameter(p + "fc1_b", torch::zeros({spec.ffn}), false);
    m.register_parameter(p + "fc2_w", w({d, spec.ffn}), false);
    m.register_parameter(p + "fc2_b", torch::zeros({d}), false);
  }
  m.define(TransformerSource(spec));
  return m;
}

}  // namespace

Status WriteShard(const std::string& path, const ShardSpec& spec) {
  if (spec.kind == ShardSpec::Kind::kTransformer && (spec.heads < 1 || spec.hidden % spec.heads != 0)) {
    return InvalidArgument("hidden size must be a multiple of heads");
  }
  const std::string tmp = path + ".tmp";
  try {
    torch::manual_seed(spec.seed);
    c10::InferenceMode off(false);
    torch::NoGradGuard no_grad;
    MakeShard(spec).save(tmp);
  } catch (const c10::Error& e) {
    std::remove(tmp.c_str());
    return Internal(std::string("cannot write shard: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    return Internal(std::string("cannot write shard: ") + e.what());
  }
  return CommitFile(tmp, path);
}

}  // namespace splitlearnd
