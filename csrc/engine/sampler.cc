#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace edgelut {

void SamplerParams::validate() const {
  auto bad = [](const std::string& msg) { throw std::invalid_argument(msg); };
  if (!std::isfinite(temperature) || temperature < 0.0f)
    bad("temperature must be >= 0 (0 = greedy), got " + std::to_string(temperature));
  if (top_k < 0) bad("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p must be in (0, 1] (1 = off), got " + std::to_string(top_p));
  if (!(min_p >= 0.0f && min_p < 1.0f)) bad("min_p must be in [0, 1) (0 = off), got " + std::to_string(min_p));
  if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
    bad("repeat_penalty must be > 0 (1 = off), got " + std::to_string(repeat_penalty));
  if (repeat_last_n < 0) bad("repeat_last_n must be >= 0, got " + std::to_string(repeat_last_n));
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    bad("presence_penalty must be in [-2, 2] (0 = off), got " + std::to_string(presence_penalty));
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    bad("frequency_penalty must be in [-2, 2] (0 = off), got " + std::to_string(frequency_penalty));
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

int32_t Sampler::sample(const float* logits, int64_t vocab, const int32_t* recent, int64_t n_recent) {
  if (vocab <= 0) throw std::invalid_argument("sample: empty logits");
  work_.assign(logits, logits + vocab);
  for (int64_t i = 0; i < vocab; ++i)
    if (!std::isfinite(work_[i])) throw std::invalid_argument("sample: logits contain NaN or infinity");

  // 1. Repetition penalty, once per distinct recent token.
  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n > 0 && n_recent > 0) {
    const int64_t from = std::max<int64_t>(0, n_recent - p_.repeat_last_n);
    std::vector<int32_t> seen(recent + from, recent + n_recent);
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= vocab) continue;  // foreign ids cannot be penalised
      float& l = work_[t];
      l = l > 0.0f ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  // 1b. Presence and frequency penalties: each distinct recent token once, with its count.
  if ((p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) && p_.repeat_last_n > 0 && n_recent > 0) {
    const int64_t from = std::max<int64_t>(0, n_recent - p_.repeat_last_n);
    std::vector<int32_t> seen(recent + from, recent + n_recent);
    std::sort(seen.begin(), seen.end());
    for (size_t i = 0, j = 0; i < seen.size(); i = j) {
      while (j < seen.size() && seen[j] == seen[i]) ++j;
      const int32_t t = seen[i];
      if (t < 0 || t >= vocab) continue;
      work_[t] -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(j - i);
    }
  }

  // 2. Greedy.
  if (p_.temperature == 0.0f || p_.top_k == 1)
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());

  // 3. Top-k (partial sort keeps this cheap for a 50k-150k vocabulary).
  cand_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) cand_[i] = {work_[i], static_cast<int32_t>(i)};
  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first;
  };
  size_t n = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < n) n = static_cast<size_t>(p_.top_k);
  // Sort only as many candidates as top-p may need: start small, widen if the
  // mass is not reached (logits are shifted by the max so exp never overflows).
  const float inv_t = 1.0f / p_.temperature;
  const float mx = std::max_element(cand_.begin(), cand_.end(), [](auto& a, auto& b) { return a.first < b.first; })->first;
  double total = 0.0;
  for (size_t i = 0; i < cand_.size(); ++i) total += std::exp((cand_[i].first - mx) * inv_t);
  size_t sorted = std::min<size_t>(n, 64);
  for (;;) {
    std::partial_sort(cand_.begin(), cand_.begin() + sorted, cand_.end(), by_logit);
    if (sorted == n) break;
    double mass = 0.0;
    for (size_t i = 0; i < sorted; ++i) mass += std::exp((cand_[i].first - mx) * inv_t);
    if (p_.top_p < 1.0f && mass / total >= p_.top_p) break;  // the top-p cut falls inside the sorted part
    // The min-p cut falls inside the sorted part.
    if (p_.min_p > 0.0f && std::exp((cand_[sorted - 1].first - mx) * inv_t) < p_.min_p) break;
    sorted = std::min(n, sorted * 4);
  }

  // 4. Softmax over the kept candidates (the denominator is all of the top-k set).
  double denom = 0.0;
  if (n == cand_.size()) {
    denom = total;
  } else {
    for (size_t i = 0; i < n; ++i) denom += std::exp((cand_[i].first - mx) * inv_t);
  }
  std::vector<double> prob(sorted);
  for (size_t i = 0; i < sorted; ++i) prob[i] = std::exp((cand_[i].first - mx) * inv_t) / denom;

  // 5. Top-p.
  size_t keep = sorted;
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < sorted; ++i) {
      cum += prob[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // 6. Min-p.
  if (p_.min_p > 0.0f) {
    const double cut = p_.min_p * prob[0];
    size_t i = 1;
    while (i < keep && prob[i] >= cut) ++i;
    keep = i;
  }
  // 7. Draw.
  double mass = 0.0;
  for (size_t i = 0; i < keep; ++i) mass += prob[i];
  const double r = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (r < acc) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace edgelut
