// Fakes for unit tests of the queue, manager and services: no libtorch needed.
//
// FakeModel answers float32 inputs with input + `add`; it can wait at a Gate, throw
// (fail), and record the threads it ran (and warmed up) on. FakeModel::live() counts
// instances alive, so a test can see when a model's memory is released;
// FakeModel::last_destroyed_on() tells which thread freed the most recent one.
// FakeLoader picks a behaviour by the model's path (a load can wait at a Gate too) and
// records the threads it loaded on.
#pragma once

#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "manager/model.h"
#include "tests/support/wait.h"

namespace splitlearnd::testing {

struct FakeBehaviour {
  float add = 1.0f;
  std::shared_ptr<Gate> gate;              // when set, every forward passes it first
  bool fail_run = false;                   // Run() answers INTERNAL
  bool throw_run = false;                  // Run() throws (a broken Model)
  bool trainable = false;                  // SaveCheckpoint() writes (records) instead of FAILED_PRECONDITION
  bool fail_checkpoint = false;            // SaveCheckpoint() answers INTERNAL
  bool fail_load = false;                  // FakeLoader refuses to load
  bool fail_warmup = false;                // Warmup() answers INTERNAL
  std::shared_ptr<Gate> load_gate;         // when set, every load passes it first
  int64_t parameter_bytes = 1024;
};

class FakeModel final : public Model {
 public:
  FakeModel(std::string id, std::string device, FakeBehaviour b)
      : id_(std::move(id)), device_(std::move(device)), b_(b) {
    live_counter().fetch_add(1);
  }
  ~FakeModel() override {
    {
      std::lock_guard<std::mutex> lock(destroyed_mu());
      destroyed_on() = std::this_thread::get_id();
    }
    live_counter().fetch_sub(1);
  }

  const std::string& id() const override { return id_; }
  const std::string& device() const override { return device_; }
  int64_t ParameterBytes() const override { return b_.parameter_bytes; }

  std::vector<StatusOr<InferenceResult>> Run(const std::vector<const InferenceRequest*>& batch) const override {
    forwards_.fetch_add(1);
    rows_run_.fetch_add(static_cast<int64_t>(batch.size()));
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.insert(std::this_thread::get_id());
      batch_sizes_.push_back(static_cast<int>(batch.size()));
    }
    if (b_.gate) b_.gate->Pass();
    if (b_.throw_run) throw std::runtime_error("fake model threw");
    std::vector<StatusOr<InferenceResult>> out;
    for (const InferenceRequest* r : batch) {
      if (b_.fail_run) {
        out.push_back(Internal("fake model failure"));
        continue;
      }
      const HostTensor& in = r->inputs.front().tensor;
      auto values = std::make_shared<std::vector<float>>(in.nbytes / sizeof(float));
      std::memcpy(values->data(), in.data, in.nbytes);
      for (float& v : *values) v += b_.add;
      HostTensor t{DType::kFloat32, in.shape, values->data(), in.nbytes, values};
      InferenceResult res;
      res.outputs.push_back(NamedTensor{"output", std::move(t)});
      out.push_back(std::move(res));
    }
    return out;
  }

  Status Warmup(int max_batch_size) const override {
    std::lock_guard<std::mutex> lock(mu_);
    warmups_.push_back(Warmed{std::this_thread::get_id(), max_batch_size});
    if (b_.fail_warmup) return Internal("fake warmup failure");
    return Status::Ok();
  }

  Status SaveCheckpoint(const std::string& path) const override {
    if (!b_.trainable) return Model::SaveCheckpoint(path);
    std::lock_guard<std::mutex> lock(mu_);
    checkpoints_.push_back(Saved{path, std::this_thread::get_id(), ++Sequence()});
    if (b_.fail_checkpoint) return Internal("fake checkpoint failure");
    return Status::Ok();
  }

  // One counter for the order of events across fakes (checkpoints, loads).
  static std::atomic<int64_t>& Sequence() {
    static std::atomic<int64_t> n{0};
    return n;
  }

  struct Saved {
    std::string path;
    std::thread::id thread;
    int64_t sequence;
  };
  std::vector<Saved> checkpoints() const {
    std::lock_guard<std::mutex> lock(mu_);
    return checkpoints_;
  }

  struct Warmed {
    std::thread::id thread;
    int max_batch_size;
  };
  std::vector<Warmed> warmups() const {
    std::lock_guard<std::mutex> lock(mu_);
    return warmups_;
  }
  int64_t forwards() const { return forwards_.load(); }
  int64_t rows_run() const { return rows_run_.load(); }
  std::set<std::thread::id> threads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_;
  }
  std::vector<int> batch_sizes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes_;
  }
  static int live() { return live_counter().load(); }
  static std::thread::id last_destroyed_on() {
    std::lock_guard<std::mutex> lock(destroyed_mu());
    return destroyed_on();
  }

 private:
  static std::atomic<int>& live_counter() {
    static std::atomic<int> n{0};
    return n;
  }
  static std::mutex& destroyed_mu() {
    static std::mutex m;
    return m;
  }
  static std::thread::id& destroyed_on() {
    static std::thread::id id;
    return id;
  }

  const std::string id_;
  const std::string device_;
  const FakeBehaviour b_;
  mutable std::atomic<int64_t> forwards_{0};
  mutable std::atomic<int64_t> rows_run_{0};
  mutable std::mutex mu_;
  mutable std::set<std::thread::id> threads_;
  mutable std::vector<int> batch_sizes_;
  mutable std::vector<Warmed> warmups_;
  mutable std::vector<Saved> checkpoints_;
};

// Loads FakeModels; the behaviour is chosen by the model's path.
class FakeLoader final : public ModelLoader {
 public:
  void Set(const std::string& path, FakeBehaviour b) {
    std::lock_guard<std::mutex> lock(mu_);
    behaviours_[path] = b;
  }

  StatusOr<std::shared_ptr<Model>> Load(const ModelConfig& config) override {
    FakeBehaviour b;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = behaviours_.find(config.path);
      if (it != behaviours_.end()) b = it->second;
      ++loads_;
      load_threads_.insert(std::this_thread::get_id());
    }
    if (b.load_gate) b.load_gate->Pass();
    if (b.fail_load) return Internal("fake load failure for " + config.path);
    auto model = std::make_shared<FakeModel>(config.id, config.device, b);
    std::lock_guard<std::mutex> lock(mu_);
    last_[config.id] = model;
    last_load_sequence_[config.id] = ++FakeModel::Sequence();
    return std::shared_ptr<Model>(model);
  }

  // The most recent model loaded for `id` (null if none); a weak view, so it does
  // not keep the model alive.
  std::shared_ptr<FakeModel> Last(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = last_.find(id);
    return it == last_.end() ? nullptr : it->second.lock();
  }
  int loads() {
    std::lock_guard<std::mutex> lock(mu_);
    return loads_;
  }
  // FakeModel::Sequence() when the last model for `id` was made (0: never).
  int64_t last_load_sequence(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = last_load_sequence_.find(id);
    return it == last_load_sequence_.end() ? 0 : it->second;
  }
  std::set<std::thread::id> load_threads() {
    std::lock_guard<std::mutex> lock(mu_);
    return load_threads_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, FakeBehaviour> behaviours_;
  std::map<std::string, std::weak_ptr<FakeModel>> last_;
  std::map<std::string, int64_t> last_load_sequence_;
  std::set<std::thread::id> load_threads_;
  int loads_ = 0;
};

}  // namespace splitlearnd::testing
