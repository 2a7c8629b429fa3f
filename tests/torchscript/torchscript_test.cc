// The TorchScript adapter through its libtorch-free interface, on shards written by
// WriteShard (no Python needed).
#include "manager/torchscript/torchscript.h"

#include "common/digest.h"
#include "manager/torchscript/aoti_model.h"
#include "manager/torchscript/demo_shard.h"

#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

using namespace splitlearnd;
namespace fs = std::filesystem;

namespace {

using testing::TempDir;

struct OwnedInput {
  std::shared_ptr<std::vector<float>> values;
  InferenceRequest request;
};

OwnedInput Input(std::vector<int64_t> shape, uint32_t seed) {
  OwnedInput in;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  in.values = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& v : *in.values) v = normal(rng);
  in.request.inputs.push_back(NamedTensor{
      "", HostTensor{DType::kFloat32, shape, in.values->data(), in.values->size() * sizeof(float), in.values}});
  return in;
}

std::vector<float> Floats(const HostTensor& t) {
  REQUIRE(t.dtype == DType::kFloat32);
  std::vector<float> v(t.nbytes / 4);
  std::memcpy(v.data(), t.data, t.nbytes);
  return v;
}

ModelConfig ModelCfg(const std::string& id, const std::string& path) {
  ModelConfig c;
  c.id = id;
  c.path = path;
  return c;
}

// A tiny shard (Linear hidden->hidden + GELU) at dir/name; returns its path.
std::string WriteTiny(const TempDir& dir, const std::string& name, int hidden) {
  ShardSpec spec;
  spec.kind = ShardSpec::Kind::kTiny;
  spec.hidden = hidden;
  const std::string path = dir / name;
  REQUIRE(WriteShard(path, spec).ok());
  return path;
}

std::shared_ptr<Model> Load(const ModelConfig& c) {
  auto m = MakeTorchScriptLoader()->Load(c);
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  return *m;
}

}  // namespace

TEST_CASE("a written transformer shard loads, warms up and runs") {
  ThreadSettings threads;
  threads.intra_op_threads = 1;
  threads.inter_op_threads = 1;
  ConfigureTorchThreads(threads);
  TempDir dir;
  ShardSpec spec;
  spec.layers = 1;
  spec.hidden = 32;
  spec.heads = 4;
  spec.ffn = 64;
  REQUIRE(WriteShard(dir / "t.pt", spec).ok());
  auto cfg = ModelCfg("t", dir / "t.pt");
  cfg.warmup.inputs.push_back(TensorSpec{"", {1, 5, 32}, DType::kFloat32});
  cfg.warmup.runs = 2;
  auto model = Load(cfg);
  CHECK(model->Warmup(4).ok());  // batch 1, then a merged batch of 4
  CHECK(model->ParameterBytes() > 32 * 32 * 4);
  auto in = Input({2, 5, 32}, 1);
  auto out = model->Run({&in.request});
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].ok());
  CHECK(out[0]->outputs[0].tensor.shape == std::vector<int64_t>{2, 5, 32});
}

TEST_CASE("a merged batch gives the same numbers as one request at a time") {
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 16);
  auto model = Load(ModelCfg("tiny", dir / "tiny.pt"));
  std::vector<OwnedInput> inputs;
  for (uint32_t i = 0; i < 4; ++i) inputs.push_back(Input({1 + i % 2, 16}, i));
  std::vector<const InferenceRequest*> batch;
  for (auto& in : inputs) batch.push_back(&in.request);
  auto merged = model->Run(batch);
  REQUIRE(merged.size() == 4);
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto alone = model->Run({&inputs[i].request});
    REQUIRE(merged[i].ok());
    REQUIRE(alone[0].ok());
    const auto a = Floats(merged[i]->outputs[0].tensor);
    const auto b = Floats(alone[0]->outputs[0].tensor);
    REQUIRE(a.size() == b.size());
    for (size_t k = 0; k < a.size(); ++k) CHECK(a[k] == Approx(b[k]).margin(1e-6));
  }
}

TEST_CASE("an optimized model gives the numbers of the plain one, alone and merged, and keeps its parameter bytes") {
  const bool prepack = GENERATE(false, true);
  INFO("prepack_linear: " << prepack);
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 16);
  auto plain = Load(ModelCfg("tiny", dir / "tiny.pt"));
  auto cfg = ModelCfg("tiny", dir / "tiny.pt");
  cfg.optimize = true;
  cfg.prepack_linear = prepack;
  auto optimized = Load(cfg);
  CHECK(optimized->ParameterBytes() == plain->ParameterBytes());
  CHECK(optimized->ParameterBytes() >= 16 * 16 * 4);
  std::vector<OwnedInput> inputs;
  for (uint32_t i = 0; i < 3; ++i) inputs.push_back(Input({1 + i, 16}, 10 + i));
  std::vector<const InferenceRequest*> batch;
  for (auto& in : inputs) batch.push_back(&in.request);
  auto merged = optimized->Run(batch);
  REQUIRE(merged.size() == 3);
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto want = plain->Run({&inputs[i].request});
    REQUIRE(want[0].ok());
    REQUIRE(merged[i].ok());
    const auto a = Floats(merged[i]->outputs[0].tensor);
    const auto b = Floats(want[0]->outputs[0].tensor);
    REQUIRE(a.size() == b.size());
    for (size_t k = 0; k < a.size(); ++k) CHECK(a[k] == Approx(b[k]).margin(1e-5));
  }
}

TEST_CASE("a model's own blas_threads is in force for its forwards, the process's for the others") {
  using GetFn = int (*)();
  auto get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (!get) {
    WARN("OpenBLAS is not the BLAS here (openblas_get_num_threads not found): nothing to check");
    return;
  }
  ThreadSettings threads;  // as the daemon does before any model runs (a no-op when done already)
  threads.intra_op_threads = 1;
  threads.inter_op_threads = 1;
  ConfigureTorchThreads(threads);
  const int process = EffectiveTorchThreads().blas_threads;
  REQUIRE(process >= 1);
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 16);
  auto own_cfg = ModelCfg("own", dir / "tiny.pt");
  own_cfg.blas_threads = 1;
  auto own = Load(own_cfg);
  auto plain = Load(ModelCfg("plain", dir / "tiny.pt"));
  auto in = Input({1, 16}, 3);
  REQUIRE(own->Run({&in.request})[0].ok());
  CHECK(get() == 1);
  REQUIRE(plain->Run({&in.request})[0].ok());
  CHECK(get() == process);
  REQUIRE(own->Run({&in.request})[0].ok());
  CHECK(get() == 1);
}

TEST_CASE("output dtype conversion and the legacy float32 default") {
  TempDir dir;
  ShardSpec spec;
  spec.kind = ShardSpec::Kind::kIdentity;
  REQUIRE(WriteShard(dir / "id.pt", spec).ok());
  auto model = Load(ModelCfg("id", dir / "id.pt"));
  auto in = Input({3}, 7);
  auto plain = model->Run({&in.request})[0];
  REQUIRE(plain.ok());
  CHECK(plain->outputs[0].tensor.dtype == DType::kFloat32);
  CHECK(Floats(plain->outputs[0].tensor) == *in.values);

  in.request.output_dtype = DType::kBFloat16;
  auto bf = model->Run({&in.request})[0];
  REQUIRE(bf.ok());
  CHECK(bf->outputs[0].tensor.dtype == DType::kBFloat16);
  CHECK(bf->outputs[0].tensor.nbytes == 6);

  std::vector<int64_t> ids{1, -2, 1LL << 40};
  InferenceRequest r;
  r.inputs.push_back(NamedTensor{"", HostTensor{DType::kInt64, {3}, ids.data(), 24, nullptr}});
  auto out = model->Run({&r})[0];
  REQUIRE(out.ok());
  CHECK(out->outputs[0].tensor.dtype == DType::kInt64);
  CHECK(std::memcmp(out->outputs[0].tensor.data, ids.data(), 24) == 0);
}

TEST_CASE("load failures are statuses with reasons, never crashes") {
  TempDir dir;
  WriteTiny(dir, "ok.pt", 8);
  auto loader = MakeTorchScriptLoader();

  SECTION("a truncated file") {
    const auto size = fs::file_size(dir / "ok.pt");
    fs::copy_file(dir / "ok.pt", dir / "cut.pt");
    fs::resize_file(dir / "cut.pt", size / 2);
    auto m = loader->Load(ModelCfg("cut", dir / "cut.pt"));
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("cannot load"));
  }
  SECTION("garbage") {
    std::ofstream(dir / "junk.pt") << "this is not a model";
    auto m = loader->Load(ModelCfg("junk", dir / "junk.pt"));
    REQUIRE_FALSE(m.ok());
  }
  SECTION("a CUDA device where there is none") {
    auto cfg = ModelCfg("gpu", dir / "ok.pt");
    cfg.device = "cuda:0";
    auto m = loader->Load(cfg);
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(m.status().message(), Catch::Contains("cuda:0") && Catch::Contains("CUDA"));
  }
  SECTION("a sha256 pin that does not match") {
    auto cfg = ModelCfg("pinned", dir / "ok.pt");
    cfg.sha256 = std::string(64, '0');
    auto m = loader->Load(cfg);
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("sha256"));
    auto digest = FileSha256(dir / "ok.pt");
    REQUIRE(digest.ok());
    cfg.sha256 = *digest;
    CHECK(loader->Load(cfg).ok());
  }
  SECTION("a warmup shape the model rejects") {
    auto cfg = ModelCfg("warm", dir / "ok.pt");
    cfg.warmup.inputs.push_back(TensorSpec{"", {1, 9}, DType::kFloat32});
    auto m = loader->Load(cfg);  // the manager warms it next, on the device worker
    REQUIRE(m.ok());
    const Status warm = (*m)->Warmup(4);
    REQUIRE_FALSE(warm.ok());
    CHECK(warm.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(warm.message(), Catch::Contains("warmup of 'warm'"));
  }
}

TEST_CASE("a shape the model rejects is INVALID_ARGUMENT, and the model still serves") {
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 8);
  auto model = Load(ModelCfg("tiny", dir / "tiny.pt"));
  auto bad = Input({2, 5}, 3);
  auto r = model->Run({&bad.request})[0];
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  auto good = Input({2, 8}, 3);
  CHECK(model->Run({&good.request})[0].ok());
}

TEST_CASE("training: the input gradient matches a finite difference, and SGD changes the output") {
  TempDir dir;
  ShardSpec spec;
  spec.kind = ShardSpec::Kind::kTiny;
  spec.hidden = 4;
  spec.seed = 3;
  REQUIRE(WriteShard(dir / "tiny.pt", spec).ok());
  auto cfg = ModelCfg("t", dir / "tiny.pt");
  cfg.training.enabled = true;
  cfg.training.learning_rate = 0.5;
  cfg.training.checkpoint_path = dir / "ckpt.pt";
  auto model = Load(cfg);

  auto in = Input({1, 4}, 11);
  in.request.training = true;
  in.request.training_config = cfg.training;
  auto fwd = model->Run({&in.request})[0];
  REQUIRE(fwd.ok());
  REQUIRE_FALSE(fwd->forward_id.empty());
  // Server-minted ids carry 128 random bits (32 hex digits after the serial): nobody
  // can guess another client's graph.
  CHECK_THAT(fwd->forward_id, Catch::Matches("f-1-[0-9a-f]{32}"));
  const auto y0 = Floats(fwd->outputs[0].tensor);

  // d(sum(y))/dx by central differences on inference runs.
  std::vector<float> numeric(4);
  for (int i = 0; i < 4; ++i) {
    auto plus = Input({1, 4}, 11), minus = Input({1, 4}, 11);
    (*plus.values)[i] += 1e-2f;
    (*minus.values)[i] -= 1e-2f;
    float sp = 0, sm = 0;
    for (float v : Floats(model->Run({&plus.request})[0]->outputs[0].tensor)) sp += v;
    for (float v : Floats(model->Run({&minus.request})[0]->outputs[0].tensor)) sm += v;
    numeric[i] = (sp - sm) / 2e-2f;
  }
  std::vector<float> ones(4, 1.0f);
  BackwardRequest b;
  b.forward_id = fwd->forward_id;
  b.training_config = cfg.training;
  // A grad_output of the wrong shape is refused and leaves the graph for a corrected retry.
  b.grad_output = HostTensor{DType::kFloat32, {2, 2}, ones.data(), 16, nullptr};
  CHECK(model->Backward(b).status().code() == StatusCode::kInvalidArgument);
  CHECK(model->Stats().training_graphs == 1);
  b.grad_output = HostTensor{DType::kFloat32, {1, 4}, ones.data(), 16, nullptr};
  auto grad = model->Backward(b);
  REQUIRE(grad.ok());
  const auto g = Floats(grad->outputs[0].tensor);
  for (int i = 0; i < 4; ++i) CHECK(g[i] == Approx(numeric[i]).margin(2e-3));
  CHECK(grad->optimizer_steps == 1);
  CHECK(model->Stats().training_graphs == 0);

  // The graph is gone once used; the parameters moved.
  CHECK(model->Backward(b).status().code() == StatusCode::kNotFound);
  auto again = Input({1, 4}, 11);
  const auto y1 = Floats(model->Run({&again.request})[0]->outputs[0].tensor);
  CHECK(y1 != y0);

  // Checkpoint and resume: a fresh load from the checkpoint gives the trained outputs.
  REQUIRE(model->SaveCheckpoint(cfg.training.checkpoint_path).ok());
  auto resumed = Load(cfg);
  auto check = Input({1, 4}, 11);
  CHECK(Floats(resumed->Run({&check.request})[0]->outputs[0].tensor) == y1);
}

TEST_CASE("training graphs are bounded by count") {
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 4);
  auto cfg = ModelCfg("t", dir / "tiny.pt");
  cfg.training.enabled = true;
  cfg.training.max_graphs = 3;
  auto model = Load(cfg);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto in = Input({1, 4}, i);
    in.request.training = true;
    in.request.training_config = cfg.training;
    auto r = model->Run({&in.request})[0];
    REQUIRE(r.ok());
    ids.push_back(r->forward_id);
  }
  CHECK(model->Stats().training_graphs == 3);
  std::vector<float> ones(4, 1.0f);
  BackwardRequest b;
  b.grad_output = HostTensor{DType::kFloat32, {1, 4}, ones.data(), 16, nullptr};
  b.training_config = cfg.training;
  b.forward_id = ids[0];  // the oldest was evicted
  CHECK(model->Backward(b).status().code() == StatusCode::kNotFound);
  b.forward_id = ids[4];
  CHECK(model->Backward(b).ok());
}

TEST_CASE("a training forward on a model without training enabled is FAILED_PRECONDITION") {
  TempDir dir;
  WriteTiny(dir, "tiny.pt", 4);
  auto model = Load(ModelCfg("t", dir / "tiny.pt"));
  auto in = Input({1, 4}, 1);
  in.request.training = true;
  CHECK(model->Run({&in.request})[0].status().code() == StatusCode::kFailedPrecondition);
}

// A two-layer nn.TransformerEncoder scripted by PyTorch 2.6 (fixtures/make_encoder_trunk.py):
// its attention calls aten::scaled_dot_product_attention, which libtorch 1.13 lacks.
TEST_CASE("a TorchScript file from PyTorch 2.x: served on libtorch 2.x, refused in a few words on 1.13") {
  const std::string file = std::string(SPLITLEARND_FIXTURES) + "/encoder_trunk_torch2.pt";
  auto loader = MakeTorchScriptLoader();
  auto m = loader->Load(ModelCfg("enc", file));
#if SPLITLEARND_TORCH_2
  REQUIRE(m.ok());
  auto in = Input({2, 5, 32}, 7);
  auto out = (*m)->Run({&in.request})[0];
  REQUIRE(out.ok());
  CHECK(out->outputs[0].tensor.shape == std::vector<int64_t>{2, 5, 32});
  for (float v : Floats(out->outputs[0].tensor)) CHECK(std::isfinite(v));
#else
  REQUIRE_FALSE(m.ok());
  const std::string msg = m.status().message();
  CHECK(m.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(msg, Catch::Contains("aten::scaled_dot_product_attention"));
  CHECK_THAT(msg, Catch::Contains("written by PyTorch 2.x"));
  CHECK_THAT(msg, Catch::Contains("libtorch 2.x") && Catch::Contains("docs/building.md"));
  // One paragraph: none of the TorchScript source libtorch prints after the cause.
  CHECK(msg.find('\n') == std::string::npos);
  CHECK(msg.find("<--- HERE") == std::string::npos);
  CHECK(msg.size() < 600);
#endif
}

TEST_CASE("an AOTInductor package on a build that cannot load one is refused, naming the libtorch it needs") {
  if (!AotInductorAvailable()) {
    TempDir dir;
    std::ofstream(dir / "t.pt2") << "not really a package";
    auto m = MakeTorchScriptLoader()->Load(ModelCfg("t", dir / "t.pt2"));
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(m.status().message(), Catch::Contains("libtorch 2.6"));
    Config c;
    c.models.push_back(ModelCfg("t", dir / "t.pt2"));
    c.models.push_back(ModelCfg("u", dir / "u.pt"));
    const Status s = CheckModelFormats(c);
    CHECK(s.code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(s.message(), Catch::Contains("models.t") && Catch::Contains("libtorch 2.6"));
  } else {
    Config c;
    c.models.push_back(ModelCfg("t", "/nonexistent/t.pt2"));
    CHECK(CheckModelFormats(c).ok());
  }
}
