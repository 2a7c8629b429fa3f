// What the ModelManager tests share: configs of fake models, one inference the way
// the compute service runs it, and a model's status by id.
#pragma once

#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "manager/model_manager.h"
#include "tests/support/catch.h"

namespace splitlearnd::testing {

inline ModelConfig MakeModel(const std::string& id, const std::string& path = "") {
  ModelConfig m;
  m.id = id;
  m.path = path.empty() ? "/fake/" + id + ".pt" : path;
  return m;
}

inline Config MakeConfig(std::vector<ModelConfig> models, DeviceConfig cpu = {}) {
  Config c;
  c.models = std::move(models);
  cpu.name = "cpu";
  c.devices["cpu"] = cpu;
  return c;
}

// Runs one float through `id` the way the compute service does: look up, enqueue,
// wait for the worker. Returns the output value.
inline StatusOr<float> Infer(const ModelManager& manager, const std::string& id, float x) {
  auto route = manager.Lookup(id);
  if (!route.ok()) return route.status();
  auto values = std::make_shared<std::vector<float>>(1, x);
  auto job = std::make_unique<Job>();
  job->model = (*route)->model;
  job->request.inputs.push_back(NamedTensor{"", HostTensor{DType::kFloat32, {1, 1}, values->data(), 4, values}});
  auto promise = std::make_shared<std::promise<StatusOr<float>>>();
  auto future = promise->get_future();
  job->done = [promise](StatusOr<InferenceResult> r, const JobTiming&) {
    if (!r.ok()) return promise->set_value(r.status());
    promise->set_value(*static_cast<const float*>(r->outputs.front().tensor.data));
  };
  Status queued = (*route)->queue->TryEnqueue(job);
  if (!queued.ok()) return queued;
  return future.get();
}

inline ModelStatus StatusOfModel(const ModelManager& m, const std::string& id) {
  auto s = m.GetModel(id);
  REQUIRE(s.has_value());
  return *s;
}

}  // namespace splitlearnd::testing
