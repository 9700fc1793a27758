// Token sampling from logits: greedy, temperature, top-k, top-p, min-p and a
// repetition penalty over the last tokens, seeded for reproducibility.
//
// Order of the steps (each is skipped at its neutral value):
//   1. repetition penalty on tokens seen in the last repeat_last_n tokens
//      (logit / p if positive, logit * p otherwise), then OpenAI's presence and
//      frequency penalties over the same window (logit -= presence + frequency * count)
//   2. temperature == 0 or top_k == 1 -> argmax (greedy), done
//   3. top_k: keep the k largest logits
//   4. softmax(logits / temperature)
//   5. top_p: keep the smallest prefix of the sorted tokens whose mass >= p
//   6. min_p: drop tokens whose probability < min_p * the largest one
//   7. draw from what is left, renormalised
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace edgelut {

struct SamplerParams {
  float temperature = 0.8f;    // 0 = greedy
  int32_t top_k = 40;          // 0 = off
  float top_p = 0.95f;         // 1 = off
  float min_p = 0.05f;         // 0 = off
  float repeat_penalty = 1.0f; // 1 = off
  int32_t repeat_last_n = 64;  // tokens the penalties look back over; 0 = off
  float presence_penalty = 0.0f;   // subtracted once from a recent token's logit; 0 = off, [-2, 2]
  float frequency_penalty = 0.0f;  // subtracted per occurrence of a recent token; 0 = off, [-2, 2]
  uint64_t seed = 0;

  // Throws std::invalid_argument naming the bad parameter.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);  // validates
  const SamplerParams& params() const { return p_; }

  // Picks a token from logits (vocab floats; not modified). recent holds the
  // previous tokens, oldest first (only the last repeat_last_n are used).
  // Throws std::invalid_argument for an empty vocabulary or non-finite logits.
  int32_t sample(const float* logits, int64_t vocab, const int32_t* recent, int64_t n_recent);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace edgelut
