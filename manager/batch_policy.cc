#include "manager/batch_policy.h"

#include <algorithm>
#include <cmath>

namespace splitlearnd {
namespace {

double Us(BatchPolicy::Duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

BatchPolicy::Duration FromUs(double us) {
  return std::chrono::duration_cast<BatchPolicy::Duration>(std::chrono::duration<double, std::micro>(us));
}

}  // namespace

void BatchPolicy::Grow(std::vector<double>& v, int64_t rows, double fill) {
  if (static_cast<int64_t>(v.size()) <= rows) v.resize(static_cast<size_t>(rows) + 1, fill);
}

BatchPolicy::Stats& BatchPolicy::StatsFor(const ModelKey& model) {
  if (models_.size() >= prune_at_ && models_.find(model.get()) == models_.end()) {
    // Forget models that are gone (never the one observed now: its batch holds it).
    for (auto i = models_.begin(); i != models_.end();) {
      if (i->second.owner.expired() && &i->second != obs_.stats) {
        i = models_.erase(i);
      } else {
        ++i;
      }
    }
    prune_at_ = std::max<size_t>(16, 2 * models_.size());
  }
  Stats& s = models_[model.get()];
  // A model freed and another allocated at the same address: start over.
  if (s.owner.expired()) {
    if (&s == obs_.stats) obs_ = Observation{};
    s = Stats{};
    s.owner = model;
  }
  return s;
}

const BatchPolicy::Stats* BatchPolicy::Find(const void* model) const {
  auto it = models_.find(model);
  return it == models_.end() || it->second.owner.expired() ? nullptr : &it->second;
}

void BatchPolicy::Took(const ModelKey& model, uint64_t batch_key, int64_t rows, int64_t max_rows, TimePoint now) {
  max_rows = std::min(max_rows, kMaxRows);
  if (rows >= max_rows || rows < 1) {
    obs_.open = false;
    return;
  }
  Stats& s = StatsFor(model);
  Grow(s.reach_p, max_rows, 0.0);
  Grow(s.reach_us, max_rows, 0.0);
  Grow(s.reach_dev_us, max_rows, 0.0);
  obs_.open = true;
  obs_.model = model.get();
  obs_.stats = &s;
  obs_.batch_key = batch_key;
  obs_.taken = now;
  obs_.first_rows = obs_.rows = rows;
  obs_.max_rows = max_rows;
  obs_.reached_us.assign(static_cast<size_t>(max_rows) + 1, -1.0);
}

void BatchPolicy::Arrived(const void* model, uint64_t batch_key, int64_t rows, TimePoint now) {
  if (!obs_.open || model != obs_.model || batch_key != obs_.batch_key) return;
  if (rows < 1 || obs_.rows + rows > obs_.max_rows) return;  // could not join
  const double at = std::max(0.0, Us(now - obs_.taken));
  for (int64_t m = obs_.rows + 1; m <= obs_.rows + rows; ++m) obs_.reached_us[static_cast<size_t>(m)] = at;
  obs_.rows += rows;
}

double BatchPolicy::Forward(const Stats& s, int64_t rows) {
  const auto& f = s.forward_us;
  const int64_t n = static_cast<int64_t>(f.size());
  if (rows < n && f[static_cast<size_t>(rows)] > 0) return f[static_cast<size_t>(rows)];
  // The two nearest sizes seen below and above (or the two nearest on one side).
  int64_t lo = -1, hi = -1;
  for (int64_t k = std::min(rows, n) - 1; k >= 1; --k) {
    if (f[static_cast<size_t>(k)] > 0) { lo = k; break; }
  }
  for (int64_t k = rows + 1; k < n; ++k) {
    if (f[static_cast<size_t>(k)] > 0) { hi = k; break; }
  }
  auto at = [&](int64_t k) { return f[static_cast<size_t>(k)]; };
  if (lo > 0 && hi > 0) return at(lo) + (at(hi) - at(lo)) * static_cast<double>(rows - lo) / static_cast<double>(hi - lo);
  if (lo < 0 && hi < 0) return 0;  // nothing known
  if (hi < 0) {  // above every size seen: extend the line through the two largest
    int64_t lo2 = -1;
    for (int64_t k = lo - 1; k >= 1; --k) {
      if (at(k) > 0) { lo2 = k; break; }
    }
    if (lo2 < 0) return at(lo);  // one size seen: assume more rows cost nothing extra
    const double slope = std::max(0.0, (at(lo) - at(lo2)) / static_cast<double>(lo - lo2));
    return at(lo) + slope * static_cast<double>(rows - lo);
  }
  // Below every size seen: the line through the two smallest, kept above a share of
  // the smallest in proportion to rows.
  int64_t hi2 = -1;
  for (int64_t k = hi + 1; k < n; ++k) {
    if (at(k) > 0) { hi2 = k; break; }
  }
  const double floor = at(hi) * static_cast<double>(rows) / static_cast<double>(hi);
  if (hi2 < 0) return at(hi);
  const double slope = std::max(0.0, (at(hi2) - at(hi)) / static_cast<double>(hi2 - hi));
  return std::max(floor, at(hi) - slope * static_cast<double>(hi - rows));
}

BatchPolicy::TimePoint BatchPolicy::WaitUntil(int64_t rows, TimePoint now, TimePoint bound) const {
  if (!obs_.open || rows < 1 || rows >= obs_.max_rows || bound <= now) return now;
  const Stats& s = *obs_.stats;
  const double t_now = Forward(s, rows);
  if (t_now <= 0) return now;  // no forward seen yet: nothing to weigh
  const double cost_now = t_now / static_cast<double>(rows);
  const double elapsed = Us(now - obs_.taken);
  const double left = Us(bound - now);
  double best_cost = cost_now, best_wait = 0;
  for (int64_t m = rows + 1; m <= obs_.max_rows; ++m) {
    const double q = s.reach_p[static_cast<size_t>(m)];
    if (q <= 0) continue;
    const double tau = s.reach_us[static_cast<size_t>(m)];
    const double patience = std::max(knobs_.deviations * s.reach_dev_us[static_cast<size_t>(m)],
                                      static_cast<double>(knobs_.min_patience.count()));
    const double give_up = tau + patience - elapsed;  // from now
    if (give_up <= 0) continue;                       // overdue: it is not coming
    if (tau - elapsed > left) continue;               // expected only after the bound
    const double wait = std::min(give_up, left);
    const double w = knobs_.wait_weight;
    const double cost = q * (w * std::max(tau - elapsed, 0.0) + Forward(s, m)) / static_cast<double>(m) +
                        (1 - q) * (w * wait + t_now) / static_cast<double>(rows);
    if (cost < best_cost) {
      best_cost = cost;
      best_wait = wait;
    }
  }
  return best_wait > 0 ? std::min(now + FromUs(best_wait), bound) : now;
}

void BatchPolicy::Ran(const ModelKey& model, int64_t rows, Duration took) {
  if (obs_.open && obs_.model == model.get()) {
    Stats& s = *obs_.stats;
    const double a = knobs_.alpha;
    for (int64_t m = obs_.first_rows + 1; m <= obs_.max_rows; ++m) {
      const auto i = static_cast<size_t>(m);
      const double at = obs_.reached_us[i];
      if (at < 0) {
        s.reach_p[i] *= 1 - a;
        continue;
      }
      if (s.reach_p[i] <= 0) {  // the first time: this is all there is to go on
        s.reach_us[i] = at;
        s.reach_dev_us[i] = at / 2;
      } else {
        s.reach_dev_us[i] += a * (std::abs(at - s.reach_us[i]) - s.reach_dev_us[i]);
        s.reach_us[i] += a * (at - s.reach_us[i]);
      }
      s.reach_p[i] += a * (1 - s.reach_p[i]);
    }
  }
  obs_.open = false;
  obs_.stats = nullptr;
  if (rows < 1 || rows > kMaxRows) return;
  Stats& s = StatsFor(model);
  Grow(s.forward_us, rows, 0.0);
  double& f = s.forward_us[static_cast<size_t>(rows)];
  const double us = std::max(Us(took), 0.001);
  f = f > 0 ? f + knobs_.alpha * (us - f) : us;
}

double BatchPolicy::ForwardUs(const void* model, int64_t rows) const {
  const Stats* s = Find(model);
  return s ? Forward(*s, rows) : 0;
}

double BatchPolicy::ReachProbability(const void* model, int64_t rows) const {
  const Stats* s = Find(model);
  return s && rows >= 0 && rows < static_cast<int64_t>(s->reach_p.size()) ? s->reach_p[static_cast<size_t>(rows)] : 0;
}

double BatchPolicy::ReachUs(const void* model, int64_t rows) const {
  const Stats* s = Find(model);
  return s && rows >= 0 && rows < static_cast<int64_t>(s->reach_us.size()) ? s->reach_us[static_cast<size_t>(rows)] : 0;
}

}  // namespace splitlearnd
