// The Engine: construction, the forward pass, eval and the generate loop.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../kernels/lut_ops.h"
#include "model.h"
#include "ops.h"

namespace edgelut {

namespace {
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}
CpuIsa pick_isa(const std::string& name) {
  if (name.empty()) return cpu_isa();
  const CpuIsa isa = isa_from_name(name);
  require(isa_supported(isa), std::string("isa '") + name + "' is not supported on this CPU or build");
  return isa;
}
const Config& validated(const Config& c) {
  c.validate();
  return c;
}
int64_t checked_ctx(int64_t n_ctx) {
  require(n_ctx > 0, "n_ctx must be positive, got " + std::to_string(n_ctx));
  return n_ctx;
}
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
// Adds the time of a scope to a Profile field when profiling is on.
struct ScopeTimer {
  ScopeTimer(bool on, double& acc) : on_(on), acc_(acc) {
    if (on_) t0_ = Clock::now();
  }
  ~ScopeTimer() {
    if (on_) acc_ += seconds_since(t0_);
  }
  bool on_;
  double& acc_;
  Clock::time_point t0_;
};
}  // namespace

Engine::Engine(const Config& c, const WeightLookup& lookup, const EngineOptions& o, const ShardSpec& shard,
               std::shared_ptr<Communicator> comm, std::shared_ptr<void> keepalive)
    : c_(validated(c)),
      shard_(shard.resolved(c)),
      opt_(o),
      isa_(pick_isa(o.isa)),
      w_(bind_weights(c_, shard_, lookup)),
      comm_(comm ? std::move(comm) : std::make_shared<NullCommunicator>()),
      keepalive_(std::move(keepalive)),
      pool_(o.n_threads <= 0 ? hardware_threads() : o.n_threads),
      kv_(c.n_layers, checked_ctx(o.n_ctx), shard_.n_kv_heads(), c.head_dim, o.kv_type) {
  require(o.prefill_chunk >= 1, "prefill_chunk must be >= 1, got " + std::to_string(o.prefill_chunk));
  const int64_t C = opt_.prefill_chunk, hd = c_.head_dim;
  n_kv_ = shard_.n_kv_heads();
  n_q_ = n_kv_ * (c_.n_heads / c_.n_kv_heads);
  n_ffn_ = shard_.n_ffn();
  x_.resize(C * c_.dim);
  xb_.resize(C * c_.dim);
  q_.resize(C * n_q_ * hd);
  k_.resize(C * n_kv_ * hd);
  v_.resize(C * n_kv_ * hd);
  att_out_.resize(C * n_q_ * hd);
  att_.resize(n_q_ * kv_.n_ctx());
  hb_.resize(C * n_ffn_);
  hb2_.resize(C * n_ffn_);
  cos_sin_.resize(C * hd);
  logits_.resize(c_.vocab_size);
  inv_freq_.resize(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i)
    inv_freq_[i] = static_cast<float>(std::pow(static_cast<double>(c_.rope_theta), -2.0 * i / hd) /
                                      (c_.rope_freq_factors.empty() ? 1.0 : c_.rope_freq_factors[i]));
}

void Engine::attach_pager(std::shared_ptr<Pager> pager, std::vector<const uint8_t*> layer_bases) {
  require(pager != nullptr, "attach_pager: no pager given");
  require(pager->n_layers() == c_.n_layers && static_cast<int64_t>(layer_bases.size()) == c_.n_layers,
          "attach_pager: the pager has " + std::to_string(pager->n_layers()) + " layers and " +
              std::to_string(layer_bases.size()) + " layer bases were given, the model has " +
              std::to_string(c_.n_layers));
  for (int64_t l = 0; l < c_.n_layers; ++l)
    check_layer_within(w_.layers[l], l, layer_bases[l], pager->layer_size(static_cast<int>(l)));
  pager_ = std::move(pager);
  layer_base_ = std::move(layer_bases);
}

void Engine::embed(int32_t id, float* row) const {
  if (w_.embd_packed) {
    dequantize_row(w_.token_embd_packed, id, row);
  } else {
    std::memcpy(row, w_.token_embd + static_cast<int64_t>(id) * c_.dim, sizeof(float) * c_.dim);
  }
}

void Engine::forward(const int32_t* ids, int64_t T, int64_t pos, int64_t first_logit, float* out) {
  const int64_t D = c_.dim, hd = c_.head_dim, half = hd / 2;
  const int64_t qd = n_q_ * hd, kvd = n_kv_ * hd, F = n_ffn_;
  const int64_t group = c_.n_heads / c_.n_kv_heads;
  const float att_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const KvType kvt = kv_.type();
  const int64_t qblk = kv_.q8_block();
  const KvQ8Kernels& q8k = kv_q8_kernels(isa_, qblk);
  float* x = x_.data();
  float* xb = xb_.data();
  auto matmul = [&](const PackedView& w, const float* in, int64_t m, float* y, double& acc) {
    ScopeTimer timer(profiling_, acc);
    lut_matmul(w, in, m, w.shape.k, y, w.shape.n, isa_, pool_);
  };
  if (profiling_) {
    prof_.tokens += T;
    ++prof_.calls;
  }

  // Token embeddings, and the RoPE angles of each position (shared by all layers).
  for (int64_t t = 0; t < T; ++t) {
    embed(ids[t], x + t * D);
    rope_angles(cos_sin_.data() + t * hd, inv_freq_.data(), half,
                static_cast<double>(pos + t) / c_.rope_linear_factor);
  }

  for (int64_t l = 0; l < c_.n_layers; ++l) {
    // Paged: layer l's bytes sit in a pager slot from here to the end of the
    // iteration (the lease releases it, also when something throws).
    LayerLease lease(pager_.get(), static_cast<int>(l));
    const LayerWeights lw = pager_ ? rebase_layer(w_.layers[l], layer_base_[l], pager_->layer_size(l), lease.data())
                                   : w_.layers[l];

    // Attention rmsnorm.
    for (int64_t t = 0; t < T; ++t) rmsnorm(xb + t * D, x + t * D, lw.attn_norm, D, c_.norm_eps);

    // q, k, v for the local heads (+ Qwen2 biases).
    matmul(lw.wq, xb, T, q_.data(), prof_.matmul_attn);
    matmul(lw.wk, xb, T, k_.data(), prof_.matmul_attn);
    matmul(lw.wv, xb, T, v_.data(), prof_.matmul_attn);
    for (int64_t t = 0; t < T; ++t) {
      if (lw.bq) axpy_f32(1.0f, lw.bq, q_.data() + t * qd, qd);
      if (lw.bk) axpy_f32(1.0f, lw.bk, k_.data() + t * kvd, kvd);
      if (lw.bv) axpy_f32(1.0f, lw.bv, v_.data() + t * kvd, kvd);
    }

    // RoPE on q and k, then k and v into the cache.
    for (int64_t t = 0; t < T; ++t) {
      rope_inplace(q_.data() + t * qd, n_q_, hd, cos_sin_.data() + t * hd, c_.rope_neox);
      rope_inplace(k_.data() + t * kvd, n_kv_, hd, cos_sin_.data() + t * hd, c_.rope_neox);
      kv_.store(l, pos + t, k_.data() + t * kvd, v_.data() + t * kvd);
    }

    // Causal GQA attention over the cache, heads split across threads.
    {
      ScopeTimer timer(profiling_, prof_.attention);
      pool_.parallel_for(n_q_, [&](int64_t h0, int64_t h1) {
        for (int64_t h = h0; h < h1; ++h) {
          const int64_t kv_off = (h / group) * hd;
          float* att = att_.data() + h * kv_.n_ctx();
          for (int64_t t = 0; t < T; ++t) {
            const int64_t p = pos + t;
            const float* qh = q_.data() + t * qd + h * hd;
            for (int64_t s = 0; s <= p; ++s) {
              const void* kr = kv_.key(l, s);
              float d;
              if (kvt == KvType::kF16)
                d = dot_f16(qh, static_cast<const uint16_t*>(kr) + kv_off, hd);
              else if (kvt == KvType::kQ8)
                d = q8k.dot(qh, static_cast<const int8_t*>(kr) + kv_off, kv_.key_scales(l, s) + kv_off / qblk, hd,
                            qblk);
              else
                d = dot_f32(qh, static_cast<const float*>(kr) + kv_off, hd);
              att[s] = att_scale * d;
            }
            softmax_inplace(att, p + 1);
            float* o = att_out_.data() + t * qd + h * hd;
            std::fill(o, o + hd, 0.0f);
            for (int64_t s = 0; s <= p; ++s) {
              const void* vr = kv_.value(l, s);
              if (kvt == KvType::kF16)
                axpy_f16(att[s], static_cast<const uint16_t*>(vr) + kv_off, o, hd);
              else if (kvt == KvType::kQ8)
                q8k.axpy(att[s], static_cast<const int8_t*>(vr) + kv_off, kv_.value_scales(l, s) + kv_off / qblk, o,
                         hd, qblk);
              else
                axpy_f32(att[s], static_cast<const float*>(vr) + kv_off, o, hd);
            }
          }
        }
      });
    }

    // Output projection of the local heads, summed across shards, residual.
    matmul(lw.wo, att_out_.data(), T, xb, prof_.matmul_attn);
    comm_->all_reduce(xb, T * D);
    for (int64_t i = 0; i < T * D; ++i) x[i] += xb[i];

    // FFN rmsnorm, gate/up, SwiGLU, down (summed across shards), residual.
    for (int64_t t = 0; t < T; ++t) rmsnorm(xb + t * D, x + t * D, lw.ffn_norm, D, c_.norm_eps);
    matmul(lw.w_gate, xb, T, hb_.data(), prof_.matmul_ffn);
    matmul(lw.w_up, xb, T, hb2_.data(), prof_.matmul_ffn);
    swiglu_inplace(hb_.data(), hb2_.data(), T * F);
    matmul(lw.w_down, hb_.data(), T, xb, prof_.matmul_ffn);
    comm_->all_reduce(xb, T * D);
    for (int64_t i = 0; i < T * D; ++i) x[i] += xb[i];
  }

  // Final rmsnorm and the lm_head, only for the rows whose logits are wanted.
  if (first_logit >= T) return;
  for (int64_t t = first_logit; t < T; ++t) rmsnorm(xb + t * D, x + t * D, w_.output_norm, D, c_.norm_eps);
  matmul(w_.lm_head, xb + first_logit * D, T - first_logit, out, prof_.lm_head);
}

void Engine::eval(const int32_t* ids, int64_t n, int64_t start_pos, float* logits, bool all_logits) {
  require(n > 0, "eval: need at least one token");
  require(start_pos >= 0 && start_pos <= n_past_,
          "eval: start_pos " + std::to_string(start_pos) + " must be in [0, " + std::to_string(n_past_) +
              "] (the KV cache holds " + std::to_string(n_past_) + " tokens)");
  require(start_pos + n <= kv_.n_ctx(),
          "eval: positions " + std::to_string(start_pos) + ".." + std::to_string(start_pos + n - 1) +
              " do not fit the context of " + std::to_string(kv_.n_ctx()) +
              " tokens (n_ctx); truncate the KV cache or create the engine with a larger n_ctx");
  for (int64_t i = 0; i < n; ++i)
    require(ids[i] >= 0 && ids[i] < c_.vocab_size, "eval: token id " + std::to_string(ids[i]) + " at index " +
                                                       std::to_string(i) + " is outside the vocabulary [0, " +
                                                       std::to_string(c_.vocab_size) + ")");
  const Clock::time_point t0 = Clock::now();
  const double before = prof_.matmul_attn + prof_.matmul_ffn + prof_.lm_head + prof_.attention;
  n_past_ = start_pos;  // positions after start_pos are forgotten
  const int64_t C = opt_.prefill_chunk, V = c_.vocab_size;
  for (int64_t c0 = 0; c0 < n; c0 += C) {
    const int64_t T = std::min(C, n - c0);
    if (all_logits) {
      forward(ids + c0, T, start_pos + c0, 0, logits + c0 * V);
    } else {
      const bool last = c0 + T == n;
      forward(ids + c0, T, start_pos + c0, last ? T - 1 : T, logits);
    }
    n_past_ = start_pos + c0 + T;
  }
  if (profiling_) {
    const double parts = prof_.matmul_attn + prof_.matmul_ffn + prof_.lm_head + prof_.attention - before;
    prof_.other += seconds_since(t0) - parts;
  }
}

void Engine::truncate(int64_t n) {
  require(n >= 0 && n <= n_past_, "truncate: keep count " + std::to_string(n) + " must be in [0, " +
                                       std::to_string(n_past_) + "] (tokens in the KV cache)");
  n_past_ = n;
}

GenerateResult Engine::generate(const int32_t* ids, int64_t n, const GenerateOptions& o,
                                const std::function<bool(int32_t)>& on_token) {
  require(n > 0, "generate: the prompt is empty (nothing to continue from)");
  require(o.max_tokens >= 1, "generate: max_tokens must be >= 1, got " + std::to_string(o.max_tokens));
  Sampler sampler(o.sampler);  // validates before any work
  std::vector<int32_t> hist = o.history;
  hist.insert(hist.end(), ids, ids + n);

  GenerateResult r;
  Clock::time_point t0 = Clock::now();
  eval(ids, n, n_past_, logits_.data(), false);
  r.prefill_s = seconds_since(t0);
  r.n_prefill = n;

  t0 = Clock::now();
  for (;;) {
    const int32_t tok = sampler.sample(logits_.data(), c_.vocab_size, hist.data(), static_cast<int64_t>(hist.size()));
    r.tokens.push_back(tok);
    hist.push_back(tok);
    if (!on_token(tok)) {
      r.stop_reason = "callback";
      break;
    }
    if (std::find(o.eos.begin(), o.eos.end(), tok) != o.eos.end()) {
      r.stop_reason = "eos";
      break;
    }
    if (static_cast<int64_t>(r.tokens.size()) >= o.max_tokens) {
      r.stop_reason = "length";
      break;
    }
    if (n_past_ >= kv_.n_ctx()) {
      r.stop_reason = "context";
      break;
    }
    eval(&tok, 1, n_past_, logits_.data(), false);
    ++r.n_decode;
  }
  r.decode_s = seconds_since(t0);
  return r;
}

}  // namespace edgelut
