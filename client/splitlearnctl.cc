// splitlearnctl: talk to a running splitlearnd, and make demo shards.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <sstream>

#include "client/client.h"
#include "manager/torchscript/torchscript.h"

namespace splitlearnd {
namespace {

std::vector<int64_t> ParseShape(const std::string& s) {
  std::vector<int64_t> shape;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, 'x')) {
    if (part.empty()) throw CLI::ValidationError("--shape", "expected dimensions like 1x10x768");
    shape.push_back(std::stoll(part));
  }
  return shape;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

// A checksum of the answer's values (as float64), for comparing runs at a glance.
double Checksum(const Tensor& t) {
  double sum = 0;
  const size_t n = t.data.size() / DTypeSize(t.dtype);
  for (size_t i = 0; i < n; ++i) {
    const char* p = t.data.data() + i * DTypeSize(t.dtype);
    switch (t.dtype) {
      case DType::kFloat32: { float v; std::memcpy(&v, p, 4); sum += v; break; }
      case DType::kInt64: { int64_t v; std::memcpy(&v, p, 8); sum += static_cast<double>(v); break; }
      case DType::kInt32: { int32_t v; std::memcpy(&v, p, 4); sum += v; break; }
      case DType::kBool: sum += (*p != 0); break;
      case DType::kFloat16: case DType::kBFloat16: {
        uint16_t h; std::memcpy(&h, p, 2);
        uint32_t bits;
        if (t.dtype == DType::kBFloat16) {
          bits = static_cast<uint32_t>(h) << 16;
        } else {
          const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
          if (exp == 0) { float v = std::ldexp(static_cast<float>(mant), -24); sum += sign ? -v : v; break; }
          bits = sign | ((exp == 31 ? 255 : exp + 112) << 23) | (mant << 13);
        }
        float v; std::memcpy(&v, &bits, 4); sum += v; break;
      }
    }
  }
  return sum;
}

}  // namespace
}  // namespace splitlearnd

int main(int argc, char** argv) {
  using namespace splitlearnd;
  CLI::App app{"splitlearnctl: talk to splitlearnd"};
  app.require_subcommand(1);
  std::string target = "127.0.0.1:50051";
  int timeout_ms = 30000;
  app.add_option("-a,--address", target, "address of the compute service")->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "deadline of each call")->capture_default_str();

  auto* health = app.add_subcommand("health", "HealthCheck: status, version, uptime");
  auto* info = app.add_subcommand("info", "GetServiceInfo: models, devices, counters");

  auto* infer = app.add_subcommand("infer", "run one random input through a model");
  std::string model, shape_text = "1x10x768", dtype_name = "float32", out_dtype_name;
  int repeat = 1;
  uint64_t seed = 0;
  infer->add_option("-m,--model", model, "model id (empty: the default model)");
  infer->add_option("--shape", shape_text, "input shape, e.g. 1x10x768")->capture_default_str();
  infer->add_option("--dtype", dtype_name, "input dtype")->capture_default_str();
  infer->add_option("--output-dtype", out_dtype_name, "answer dtype (default: the input's)");
  infer->add_option("--repeat", repeat, "send the request this many times")->capture_default_str();
  infer->add_option("--seed", seed, "seed of the random input")->capture_default_str();

  auto* shard = app.add_subcommand("make-demo-shard", "write a TorchScript shard with random weights");
  std::string shard_path, kind = "transformer";
  ShardSpec spec;
  shard->add_option("path", shard_path, "where to write the .pt file")->required();
  shard->add_option("--kind", kind, "transformer, tiny (Linear+GELU) or identity")
      ->check(CLI::IsMember({"transformer", "tiny", "identity"}))->capture_default_str();
  shard->add_option("--layers", spec.layers, "transformer layers")->capture_default_str();
  shard->add_option("--hidden", spec.hidden, "hidden size")->capture_default_str();
  shard->add_option("--heads", spec.heads, "attention heads")->capture_default_str();
  shard->add_option("--ffn", spec.ffn, "feed-forward size")->capture_default_str();
  shard->add_flag("--causal", spec.causal, "causal self-attention");
  shard->add_option("--seed", spec.seed, "random seed of the weights")->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  if (*shard) {
    spec.kind = kind == "tiny" ? ShardSpec::Kind::kTiny
                : kind == "identity" ? ShardSpec::Kind::kIdentity : ShardSpec::Kind::kTransformer;
    if (auto s = WriteShard(shard_path, spec); !s.ok()) return Fail(s);
    std::printf("wrote %s shard to %s\n", kind.c_str(), shard_path.c_str());
    return 0;
  }

  ClientOptions options;
  options.timeout = std::chrono::milliseconds(timeout_ms);
  Client client(target, options);
  if (*health) {
    auto h = client.Health();
    if (!h.ok()) return Fail(h.status());
    std::printf("status:  %s\nmessage: %s\nversion: %s\nuptime:  %.1f s\n", h->status().c_str(), h->message().c_str(),
                h->version().c_str(), h->uptime_seconds());
    return h->status() == "healthy" ? 0 : 3;
  }
  if (*info) {
    auto i = client.Info();
    if (!i.ok()) return Fail(i.status());
    std::printf("service:  %s %s\ndevices:  %s\nuptime:   %.1f s\nrequests: %lld\n", i->service_name().c_str(),
                i->version().c_str(), i->device().c_str(), i->uptime_seconds(),
                static_cast<long long>(i->total_requests()));
    std::map<std::string, std::string> sorted(i->custom_info().begin(), i->custom_info().end());
    for (const auto& [k, v] : sorted) std::printf("  %-40s %s\n", k.c_str(), v.c_str());
    return 0;
  }
  if (*infer) {
    const auto dtype = DTypeFromName(dtype_name);
    if (!dtype) return Fail(InvalidArgument("unknown dtype " + dtype_name));
    std::optional<DType> out_dtype;
    if (!out_dtype_name.empty()) {
      out_dtype = DTypeFromName(out_dtype_name);
      if (!out_dtype) return Fail(InvalidArgument("unknown dtype " + out_dtype_name));
    }
    Tensor x;
    x.dtype = *dtype;
    x.shape = ParseShape(shape_text);
    int64_t n = 1;
    for (auto d : x.shape) n *= d;
    if (*dtype != DType::kFloat32) return Fail(InvalidArgument("infer generates float32 inputs only; use --output-dtype"));
    std::vector<float> values(static_cast<size_t>(n));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    for (auto& v : values) v = normal(rng);
    x.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    for (int i = 0; i < repeat; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = client.Compute(model, x, out_dtype);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (!r.ok()) return Fail(r.status());
      std::string shape;
      for (auto d : r->tensor.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
      std::printf("output %s %s checksum %.6f  round trip %.3f ms (compute %.3f ms, queue %.3f ms)\n", shape.c_str(),
                  DTypeName(r->tensor.dtype), Checksum(r->tensor), ms, r->compute_time_ms, r->queue_time_ms);
    }
    return 0;
  }
  return 0;
}
