// Training through the adapter for every output structure inference serves: a tensor,
// a GPT-2-style (hidden, presents) tuple whose cache comes back on every call, a dict
// and a list. Each trunk is defined here (Module::define), served by the loader, and
// checked against libtorch's own autograd and SGD step on a copy of the same file.
// Includes libtorch, as optimize_test does.
// libtorch first: c10's logging defines a CHECK of its own (fatal on failure, never
// counted by Catch). It is dropped, so that catch.hpp's CHECK is the one used below.
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>
#undef CHECK
#include "tests/support/catch.h"

#include <cstring>
#include <limits>
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

// A trunk written with weights from `seed` into a temporary folder and served for SGD
// training, its checkpoint beside it.
struct TrainedTrunk {
  testing::TempDir dir;
  std::string path;
  ModelConfig cfg;
  std::shared_ptr<Model> model;

  TrainedTrunk(const Trunk& trunk, uint64_t seed) : path(dir / "trunk.pt") {
    WriteTrunk(trunk, path, seed);
    cfg.id = "trunk";
    cfg.path = path;
    cfg.training.enabled = true;
    cfg.training.optimizer = "sgd";
    cfg.training.learning_rate = kLearningRate;
    cfg.training.checkpoint_path = dir / "trunk.ckpt.pt";
    auto loaded = MakeTorchScriptLoader()->Load(cfg);
    INFO(loaded.status().ToString());
    REQUIRE(loaded.ok());
    model = *loaded;
  }
};

}  // namespace

TEST_CASE("training forward, backward and SGD step through every output structure inference serves") {
  const Trunk trunk = MakeTrunk(GENERATE("tensor", "(hidden, presents)", "dict", "list"));
  INFO("trunk returns " << trunk.kind);
  const TrainedTrunk trained(trunk, 7);
  const std::string& path = trained.path;
  const ModelConfig& cfg = trained.cfg;
  const std::shared_ptr<Model> model = trained.model;

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

TEST_CASE("pipelined training: several forwards in flight, their backwards in any order") {
  TrainedTrunk trained(MakeTrunk("tensor"), 5);
  const std::string& path = trained.path;
  const ModelConfig& cfg = trained.cfg;
  const auto model = trained.model;

  constexpr int kInFlight = 3;
  torch::manual_seed(13);
  std::vector<at::Tensor> xs, grads;
  for (int i = 0; i < kInFlight; ++i) {
    xs.push_back(torch::randn({2, 3, kDim}));
    grads.push_back(torch::randn({2, 3, kDim}));
  }

  // The reference: every forward saw the starting weights, so each input gradient is
  // taken at them, and plain SGD applies the sum of the parameter gradients.
  torch::jit::Module ref = torch::jit::load(path);
  for (auto p : ref.parameters()) p.requires_grad_(true);
  std::vector<at::Tensor> want_grad_input;
  for (int i = 0; i < kInFlight; ++i) {
    const at::Tensor x = xs[i].clone().requires_grad_(true);
    ref.forward({x}).toTensor().backward(grads[i]);
    want_grad_input.push_back(x.grad());
  }
  std::map<std::string, at::Tensor> stepped;
  for (const auto& p : ref.named_parameters()) stepped[p.name] = (p.value - kLearningRate * p.value.grad()).detach();

  std::vector<std::string> ids;
  for (int i = 0; i < kInFlight; ++i) {
    InferenceRequest train;
    train.inputs.push_back(NamedTensor{"", Host(xs[i])});
    train.training = true;
    train.training_config = cfg.training;
    auto fwd = model->Run({&train})[0];
    INFO(fwd.status().ToString());
    REQUIRE(fwd.ok());
    ids.push_back(fwd->forward_id);
  }
  int64_t steps = 0;
  for (int i : {1, 2, 0}) {
    INFO("backward of forward " << i);
    BackwardRequest back;
    back.forward_id = ids[i];
    back.grad_output = Host(grads[i]);
    back.training_config = cfg.training;
    auto grad = model->Backward(back);
    INFO(grad.status().ToString());
    REQUIRE(grad.ok());
    CHECK(grad->optimizer_steps == ++steps);
    CheckClose(FromHost(grad->outputs[0].tensor), want_grad_input[i], "input gradient");
  }
  REQUIRE(model->SaveCheckpoint(cfg.training.checkpoint_path).ok());
  const auto saved = Parameters(torch::jit::load(cfg.training.checkpoint_path));
  for (const auto& [name, want] : stepped) {
    REQUIRE(saved.count(name) == 1);
    CheckClose(saved.at(name), want, "parameter " + name + " after three steps");
  }
  // Serving between training calls sees the live weights, not a forward's copy.
  InferenceRequest infer;
  infer.inputs.push_back(NamedTensor{"", Host(xs[0])});
  auto served = model->Run({&infer})[0];
  REQUIRE(served.ok());
  CheckClose(FromHost(served->outputs[0].tensor), torch::jit::load(cfg.training.checkpoint_path).forward({xs[0]}).toTensor(),
             "inference after the steps");
}

TEST_CASE("named gradients: further outputs get theirs, together with the primary one") {
  TrainedTrunk trained(MakeTrunk("dict"), 9);
  const std::string& path = trained.path;
  const ModelConfig& cfg = trained.cfg;
  const auto model = trained.model;

  torch::manual_seed(17);
  const at::Tensor x = torch::randn({2, 3, kDim});
  const at::Tensor grad_hidden = torch::randn({2, 3, kDim});
  const at::Tensor grad_pooled = torch::randn({2, kDim});

  torch::jit::Module ref = torch::jit::load(path);
  for (auto p : ref.parameters()) p.requires_grad_(true);
  const at::Tensor x_ref = x.clone().requires_grad_(true);
  auto out = ref.forward({x_ref}).toGenericDict();
  torch::autograd::backward({out.at("last_hidden_state").toTensor(), out.at("pooled").toTensor()},
                            {grad_hidden, grad_pooled});
  std::map<std::string, at::Tensor> stepped;
  for (const auto& p : ref.named_parameters()) stepped[p.name] = (p.value - kLearningRate * p.value.grad()).detach();

  InferenceRequest train;
  train.inputs.push_back(NamedTensor{"", Host(x)});
  train.training = true;
  train.training_config = cfg.training;
  auto fwd = model->Run({&train})[0];
  REQUIRE(fwd.ok());

  BackwardRequest back;
  back.forward_id = fwd->forward_id;
  back.grad_output = Host(grad_hidden);
  back.training_config = cfg.training;

  // A name the forward did not answer, or a wrong shape, leaves the graph in place.
  back.named_grad_outputs = {NamedTensor{"pooler", Host(grad_pooled)}};
  auto refused = model->Backward(back);
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Catch::Contains("pooler"));
  const at::Tensor wrong = torch::randn({2, kDim + 1});
  back.named_grad_outputs = {NamedTensor{"pooled", Host(wrong)}};
  CHECK(model->Backward(back).status().code() == StatusCode::kInvalidArgument);

  back.named_grad_outputs = {NamedTensor{"pooled", Host(grad_pooled)}};
  auto grad = model->Backward(back);
  INFO(grad.status().ToString());
  REQUIRE(grad.ok());
  CheckClose(FromHost(grad->outputs[0].tensor), x_ref.grad(), "input gradient");
  REQUIRE(model->SaveCheckpoint(cfg.training.checkpoint_path).ok());
  const auto saved = Parameters(torch::jit::load(cfg.training.checkpoint_path));
  for (const auto& [name, want] : stepped) CheckClose(saved.at(name), want, "parameter " + name + " after the step");
}

TEST_CASE("training guards: a NaN or infinite gradient, or a learning rate over the cap, changes nothing") {
  TrainedTrunk trained(MakeTrunk("dict"), 3);
  const std::string& path = trained.path;
  ModelConfig& cfg = trained.cfg;
  const auto model = trained.model;
  cfg.training.max_learning_rate = 0.5;
  const auto before = Parameters(torch::jit::load(path));

  torch::manual_seed(19);
  const at::Tensor x = torch::randn({2, 3, kDim});
  InferenceRequest train;
  train.inputs.push_back(NamedTensor{"", Host(x)});
  train.training = true;
  train.training_config = cfg.training;
  auto fwd = model->Run({&train})[0];
  REQUIRE(fwd.ok());

  const at::Tensor good = torch::randn({2, 3, kDim});
  const at::Tensor good_pooled = torch::randn({2, kDim});
  at::Tensor nan = good.clone();
  nan[0][1][2] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor inf = good_pooled.clone();
  inf[1][0] = std::numeric_limits<float>::infinity();
  BackwardRequest back;
  back.forward_id = fwd->forward_id;
  back.training_config = cfg.training;

  back.grad_output = Host(nan);
  auto refused = model->Backward(back);
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Catch::Contains("NaN or infinity"));

  back.grad_output = Host(good);
  back.named_grad_outputs = {NamedTensor{"pooled", Host(inf)}};
  refused = model->Backward(back);
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Catch::Contains("pooled"));

  back.named_grad_outputs.clear();
  back.learning_rate = 0.75;
  refused = model->Backward(back);
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Catch::Contains("max_learning_rate"));

  // Nothing stepped, and the graph is still there for a corrected call.
  REQUIRE(model->SaveCheckpoint(cfg.training.checkpoint_path).ok());
  for (const auto& [name, want] : before) {
    CHECK(torch::equal(Parameters(torch::jit::load(cfg.training.checkpoint_path)).at(name), want));
  }
  back.learning_rate = 0.5;
  auto grad = model->Backward(back);
  INFO(grad.status().ToString());
  REQUIRE(grad.ok());
  CHECK(grad->optimizer_steps == 1);
}
