// Training through the adapter for every output structure inference serves: a tensor,
// a GPT-2-style (hidden, presents) tuple whose cache comes back on every call, a dict
// and a list. Each trunk is defined here (Module::define), served by the loader, and
// checked against libtorch's own autograd and SGD step on a copy of the same file.
// Includes libtorch, as optimize_test does.
// libtorch first: c10's logging defines a CHECK of its own (fatal on failure, never
// counted by Catch). It is dropped, so that catch.hpp's CHECK is the one used below.
#include <torch/script.h>
#undef CHECK
#include "tests/support/catch.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "manager/torchscript/torchscript.h"
#include "tests/support/temp_dir.h"

using namespace splitlearnd;

namespace {

constexpr int64_t kDim = 6;
constexpr double kLearningRate = 0.1;

const char* const kHidden = "    h = torch.tanh(torch.matmul(hidden_states, self.w) + self.b)\n";

struct Trunk {
  std::string kind;
  std::string source;
  std::string primary;  // the answer's name of the output the gradient flows from
};

Trunk MakeTrunk(const std::string& kind) {
  if (kind == "tensor") {
    return {kind, std::string("def forward(self, hidden_states):\n") + kHidden + "    return h\n", "output"};
  }
  if (kind == "(hidden, presents)") {
    // As Hugging Face blocks with use_cache on: the cache comes back on every call.
    return {kind,
            std::string("def forward(self, hidden_states, past_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None):\n") +
                kHidden +
                "    presents: List[Tuple[Tensor, Tensor]] = []\n"
                "    for i in range(2):\n"
                "        k = torch.matmul(hidden_states, self.w).unsqueeze(1) * float(i + 1)\n"
                "        presents.append((k, h.unsqueeze(1)))\n"
                "    return h, presents\n",
            "output_0"};
  }
  if (kind == "dict") {
    return {kind,
            std::string("def forward(self, hidden_states) -> Dict[str, Tensor]:\n") + kHidden +
                "    return {'last_hidden_state': h, 'pooled': h.mean(1)}\n",
            "last_hidden_state"};
  }
  return {kind,
          std::string("def forward(self, hidden_states) -> List[Tensor]:\n") + kHidden +
              "    return [h, h * h]\n",
          "output_0"};
}

// The trunk with weights drawn from `seed`, saved to `path`.
void WriteTrunk(const Trunk& trunk, const std::string& path, uint64_t seed) {
  torch::manual_seed(seed);
  torch::jit::Module m("Trunk");
  m.register_parameter("w", torch::randn({kDim, kDim}) * 0.5, false);
  m.register_parameter("b", torch::randn({kDim}) * 0.1, false);
  m.define(trunk.source);
  m.save(path);
}

// The primary output of a forward's result, as the protocol defines it.
at::Tensor Primary(const c10::IValue& out) {
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple()) return out.toTupleRef().elements()[0].toTensor();
  if (out.isGenericDict()) return out.toGenericDict().at("last_hidden_state").toTensor();
  return out.toListRef()[0].toTensor();
}

// A host tensor over `t`'s bytes; `t` must stay alive.
HostTensor Host(const at::Tensor& t) {
  REQUIRE(t.scalar_type() == at::kFloat);
  REQUIRE(t.is_contiguous());
  return HostTensor{DType::kFloat32, t.sizes().vec(), t.data_ptr(), t.nbytes(), nullptr};
}

at::Tensor FromHost(const HostTensor& h) {
  REQUIRE(h.dtype == DType::kFloat32);
  return torch::from_blob(const_cast<void*>(h.data), h.shape, at::kFloat).clone();
}

// max |got - want| <= 1e-5 * max |want|
void CheckClose(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  INFO(what);
  REQUIRE(got.sizes() == want.sizes());
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  INFO("max abs difference " << err << ", largest value " << scale);
  CHECK(scale > 0);
  CHECK(err <= 1e-5 * scale);
}

std::map<std::string, at::Tensor> Parameters(const torch::jit::Module& m) {
  std::map<std::string, at::Tensor> result;
  for (const auto& p : m.named_parameters()) result[p.name] = p.value.detach().clone();
  return result;
}

}  // namespace

TEST_CASE("training forward, backward and SGD step through every output structure inference serves") {
  const Trunk trunk = MakeTrunk(GENERATE("tensor", "(hidden, presents)", "dict", "list"));
  INFO("trunk returns " << trunk.kind);
  testing::TempDir dir;
  const std::string path = dir / "trunk.pt";
  WriteTrunk(trunk, path, 7);

  ModelConfig cfg;
  cfg.id = "trunk";
  cfg.path = path;
  cfg.training.enabled = true;
  cfg.training.optimizer = "sgd";
  cfg.training.learning_rate = kLearningRate;
  cfg.training.checkpoint_path = dir / "trunk.ckpt.pt";
  auto loaded = MakeTorchScriptLoader()->Load(cfg);
  INFO(loaded.status().ToString());
  REQUIRE(loaded.ok());
  const std::shared_ptr<Model> model = *loaded;

  torch::manual_seed(11);
  const at::Tensor x = torch::randn({2, 3, kDim});
  const at::Tensor grad_out = torch::randn({2, 3, kDim});

  // The reference: the same file, differentiated and stepped by libtorch here.
  torch::jit::Module ref = torch::jit::load(path);
  for (auto p : ref.parameters()) p.requires_grad_(true);
  const at::Tensor x_ref = x.clone().requires_grad_(true);
  Primary(ref.forward({x_ref})).backward(grad_out);
  std::map<std::string, at::Tensor> stepped;
  for (const auto& p : ref.named_parameters()) stepped[p.name] = (p.value - kLearningRate * p.value.grad()).detach();

  InferenceRequest infer;
  infer.inputs.push_back(NamedTensor{"", Host(x)});
  auto inference = model->Run({&infer})[0];
  REQUIRE(inference.ok());

  InferenceRequest train = infer;
  train.training = true;
  train.training_config = cfg.training;
  auto fwd = model->Run({&train})[0];
  INFO(fwd.status().ToString());
  REQUIRE(fwd.ok());
  REQUIRE_FALSE(fwd->forward_id.empty());

  // The training forward answers what inference answers: the same outputs under the
  // same names, the primary one first, and the same cache.
  REQUIRE(fwd->outputs.size() == inference->outputs.size());
  CHECK(fwd->outputs[0].name == trunk.primary);
  for (size_t i = 0; i < fwd->outputs.size(); ++i) {
    CHECK(fwd->outputs[i].name == inference->outputs[i].name);
    CheckClose(FromHost(fwd->outputs[i].tensor), FromHost(inference->outputs[i].tensor), fwd->outputs[i].name);
  }
  REQUIRE(fwd->present_key_values.size() == inference->present_key_values.size());
  CHECK(fwd->present_key_values.size() == (trunk.kind == "(hidden, presents)" ? 2u : 0u));
  for (size_t i = 0; i < fwd->present_key_values.size(); ++i) {
    CheckClose(FromHost(fwd->present_key_values[i].key), FromHost(inference->present_key_values[i].key), "key");
    CheckClose(FromHost(fwd->present_key_values[i].value), FromHost(inference->present_key_values[i].value), "value");
  }

  BackwardRequest back;
  back.forward_id = fwd->forward_id;
  back.grad_output = Host(grad_out);
  back.training_config = cfg.training;
  auto grad = model->Backward(back);
  INFO(grad.status().ToString());
  REQUIRE(grad.ok());
  CHECK(grad->optimizer_steps == 1);
  CheckClose(FromHost(grad->outputs[0].tensor), x_ref.grad(), "input gradient");

  // The served weights took the step libtorch took here.
  REQUIRE(model->SaveCheckpoint(cfg.training.checkpoint_path).ok());
  const auto saved = Parameters(torch::jit::load(cfg.training.checkpoint_path));
  REQUIRE(saved.size() == stepped.size());
  for (const auto& [name, want] : stepped) {
    REQUIRE(saved.count(name) == 1);
    CheckClose(saved.at(name), want, "parameter " + name + " after the step");
  }
}
