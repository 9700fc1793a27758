// The Engine: construction, the forward pass, eval and the generate loop.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

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
// x (n floats) times the block-diagonal normalised Hadamard matrix, in place: the online half of
// the incoherence rotation (quantize/rotate.py; ffn_down holds the inverse). n log2(block) adds,
// against the n * dim multiply-adds of ffn_down. Butterflies in the order of the numpy reference.
void block_hadamard(float* x, int64_t n, int64_t block) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(block));
  for (int64_t b = 0; b < n; b += block) {
    float* v = x + b;
    for (int64_t h = 1; h < block; h *= 2)
      for (int64_t i = 0; i < block; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float a = v[j], c = v[j + h];
          v[j] = a + c;
          v[j + h] = a - c;
        }
    for (int64_t i = 0; i < block; ++i) v[i] *= scale;
  }
}
const Config& validated(const Config& c) {
  c.validate();
  return c;
}
int64_t checked_ctx(int64_t n_ctx) {
  require(n_ctx > 0, "n_ctx must be positive, got " + std::to_string(n_ctx));
  return n_ctx;
}
// Of the shard's layer range (the KV cache holds those layers only).
std::vector<bool> sliding_layers(const Config& c, const ShardSpec& s) {
  std::vector<bool> out(static_cast<size_t>(s.n_layers()));
  for (int64_t l = s.layer_begin; l < s.layer_end; ++l) out[l - s.layer_begin] = c.is_sliding(l);
  return out;
}
// (rd / 2) RoPE frequencies for base theta over rd rotated dims, each divided by its factor
// (Llama 3.1, LongRoPE) when given.
std::vector<float> rope_frequencies(double theta, int64_t hd, const std::vector<float>& factors) {
  std::vector<float> f(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    f[i] = static_cast<float>(std::pow(theta, -2.0 * i / hd) / (factors.empty() ? 1.0 : factors[i]));
  return f;
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

void Engine::check_options(const EngineOptions& o) {
  pick_isa(o.isa);
  matmul_path_from_name(o.matmul_path);
  checked_ctx(o.n_ctx);
  require(o.prefill_chunk >= 1, "prefill_chunk must be >= 1, got " + std::to_string(o.prefill_chunk));
}

Engine::Engine(const Config& c, const WeightLookup& lookup, const EngineOptions& o, const ShardSpec& shard,
               std::shared_ptr<Communicator> comm, std::shared_ptr<void> keepalive)
    : c_(validated(c)),
      shard_(shard.resolved(c)),
      opt_(o),
      isa_(pick_isa(o.isa)),
      path_(matmul_path_from_name(o.matmul_path)),
      w_(bind_weights(c_, shard_, lookup)),
      comm_(comm ? std::move(comm) : std::make_shared<NullCommunicator>()),
      keepalive_(std::move(keepalive)),
      pool_(o.n_threads <= 0 ? hardware_threads() : o.n_threads),
      kv_(shard_.n_layers(), checked_ctx(o.n_ctx), shard_.n_kv_heads(), c.head_dim, o.kv_type,
          sliding_layers(c, shard_), o.swa_full_cache ? 0 : c.sliding_window, o.prefill_chunk) {
  require(o.prefill_chunk >= 1, "prefill_chunk must be >= 1, got " + std::to_string(o.prefill_chunk));
  require(!shard_.layer_split(c_) || !dynamic_cast<NullCommunicator*>(comm_.get()),
          "a layer range (layers " + std::to_string(shard_.layer_begin) + ".." + std::to_string(shard_.layer_end - 1) +
              ") runs only with a communicator that joins it to the other devices");
  const int64_t C = opt_.prefill_chunk, hd = c_.head_dim;
  n_kv_ = shard_.n_kv_heads();
  n_q_ = shard_.n_q_heads();
  n_ffn_ = shard_.n_ffn();
  x_.resize(C * c_.dim);
  xb_.resize(C * c_.dim);
  q_.resize(C * n_q_ * hd);
  k_.resize(C * n_kv_ * hd);
  v_.resize(C * n_kv_ * hd);
  att_out_.resize(C * n_q_ * hd);
  hb_.resize(C * n_ffn_);
  hb2_.resize(C * n_ffn_);
  cos_sin_.resize(C * hd);
  logits_.resize(c_.vocab_size);
  embd_row_.resize(w_.embd_cols);
  inv_freq_ = rope_frequencies(c_.rope_theta, c_.rotary_dim(), c_.rope_freq_factors);
  if (!c_.rope_long_factors.empty()) {
    inv_freq_long_ = rope_frequencies(c_.rope_theta, c_.rotary_dim(), c_.rope_long_factors);
    rope_long_at_.assign(static_cast<size_t>(kv_.n_ctx()), 2);
  }
  // Sliding layers (Gemma 3) have their own base and no scaling.
  if (c_.sliding_window > 0) {
    inv_freq_local_ =
        rope_frequencies(c_.rope_local_theta > 0 ? c_.rope_local_theta : c_.rope_theta, c_.rotary_dim(), {});
    cos_sin_local_.resize(C * hd);
  }
}

void Engine::attach_pager(std::shared_ptr<Pager> pager, std::vector<const uint8_t*> layer_bases,
                          std::optional<PagedOutput> output) {
  require(pager != nullptr, "attach_pager: no pager given");
  const int64_t n_chunks = output ? static_cast<int64_t>(output->chunk_tiles.size()) - 1 : 0;
  require(shard_.lm_head || n_chunks <= 0, "attach_pager: this shard has no lm_head to page");
  // Pager layer i is the shard's layer layer_begin + i (a layer split pages its range only).
  const int64_t L0 = shard_.layer_begin, NL = shard_.n_layers();
  require(pager->n_layers() == NL + n_chunks && static_cast<int64_t>(layer_bases.size()) == NL,
          "attach_pager: the pager has " + std::to_string(pager->n_layers()) + " layers and " +
              std::to_string(layer_bases.size()) + " layer bases were given, the shard has " + std::to_string(NL) +
              " layers and " + std::to_string(n_chunks) + " lm_head chunks");
  for (int64_t i = 0; i < NL; ++i)
    check_layer_within(w_.layers[L0 + i], L0 + i, layer_bases[i], pager->layer_size(static_cast<int>(i)));
  if (output && shard_.lm_head) {
    const PagedOutput& o = *output;
    require(n_chunks >= 1 && o.chunk_tiles.front() == 0 && o.chunk_tiles.back() == o.lm_shape.tiles() &&
                o.lm_shape.n == c_.vocab_size && o.lm_shape.k == c_.dim,
            "attach_pager: the lm_head chunks do not cover the (vocab, dim) lm_head");
    for (int64_t ch = 0; ch < n_chunks; ++ch)
      require(pager->n_pieces(static_cast<int>(NL + ch)) == (o.lm_shape.asym ? 3 : 2),
              "attach_pager: an lm_head chunk must be read as codes, scales (and mins)");
  }
  if (output) {
    const PagedOutput& o = *output;
    if (o.embd_packed) {
      const PackedShape& e = o.embd_shape;
      embd_tile_.resize(align_up(e.groups() * e.group_code_bytes(), kSectionAlign) +
                        align_up(e.scale_tile_bytes(), kSectionAlign) + align_up(e.min_tile_bytes(), kSectionAlign));
    } else {
      embd_tile_.resize(sizeof(float) * w_.embd_cols);
    }
  }
  pager_ = std::move(pager);
  layer_base_ = std::move(layer_bases);
  out_paged_ = std::move(output);
}

void Engine::embed(int32_t id, float* row) {
  const int64_t b = shard_.embd_begin, e = shard_.embd_end, D = c_.dim;
  if (b == 0 && e == D) {
    embed_stored(id, row);
    return;
  }
  // Split embeddings: this shard's columns, zeros elsewhere.
  embed_stored(id, embd_row_.data());
  const float* src = embd_row_.data() + (w_.embd_cols == D ? b : 0);
  std::fill(row, row + D, 0.0f);
  std::copy(src, src + (e - b), row + b);
}

void Engine::embed_stored(int32_t id, float* row) {
  if (out_paged_ && !out_paged_->embd_packed) {
    // A float row: one contiguous read.
    const uint64_t bytes = sizeof(float) * w_.embd_cols;
    pager_->read_bytes(out_paged_->embd_offset + static_cast<uint64_t>(id) * bytes, bytes, embd_tile_.data());
    std::memcpy(row, embd_tile_.data(), bytes);
  } else if (out_paged_) {
    // The row tile holding the token, as a one-tile packed matrix: its codes,
    // scales and mins are contiguous runs of the three sections.
    const PackedShape& e = out_paged_->embd_shape;
    const uint64_t t = static_cast<uint64_t>(id) / kTileRows, NG = e.groups();
    const uint64_t code_bytes = NG * e.group_code_bytes(), scale_bytes = e.scale_tile_bytes();
    const uint64_t min_bytes = e.min_tile_bytes();
    PackedShape one = e;
    one.n = kTileRows;
    const uint64_t base = out_paged_->embd_offset;
    uint8_t* buf = embd_tile_.data();
    pager_->read_bytes(base + e.codes_offset() + t * code_bytes, code_bytes, buf + one.codes_offset());
    pager_->read_bytes(base + e.scales_offset() + t * scale_bytes, scale_bytes, buf + one.scales_offset());
    if (e.asym) pager_->read_bytes(base + e.mins_offset() + t * min_bytes, min_bytes, buf + one.mins_offset());
    dequantize_row(PackedView::over(one, buf), id % kTileRows, row);
  } else if (w_.embd_packed) {
    dequantize_row(w_.token_embd_packed, id, row);
  } else {
    std::memcpy(row, w_.token_embd + static_cast<int64_t>(id) * w_.embd_cols, sizeof(float) * w_.embd_cols);
  }
}

void Engine::forward(const int32_t* ids, int64_t T, int64_t pos, int64_t first_logit, float* out) {
  const int64_t D = c_.dim, hd = c_.head_dim, rd = c_.rotary_dim(), half = rd / 2;
  const int64_t qd = n_q_ * hd, kvd = n_kv_ * hd, F = n_ffn_;
  const int64_t group = c_.n_heads / c_.n_kv_heads;
  // Local q head h is global head q_head_begin + h; its kv head, local to this shard.
  const int64_t q0 = shard_.q_head_begin, kv0 = shard_.kv_head_begin;
  const float att_scale = c_.attn_scale > 0 ? c_.attn_scale : 1.0f / std::sqrt(static_cast<float>(hd));
  const AttnHead attn_head_fn = attn_head(isa_, kv_.type());
  const GatedAct act_fn = gated_act(isa_, c_.ffn_gelu);
  float* x = x_.data();
  float* xb = xb_.data();
  // Weights that read the same input go in one call: the activation tables
  // are built once and the pool is handed one job (lut_matmul_multi).
  auto matmul_n = [&](std::initializer_list<MatmulOut> outs, const float* in, int64_t m, double& acc) {
    ScopeTimer timer(profiling_, acc);
    lut_matmul_multi(outs.begin(), static_cast<int>(outs.size()), in, m, outs.begin()->w->shape.k, isa_, pool_,
                     path_, profiling_ ? &prof_.tables : nullptr);
  };
  auto matmul = [&](const PackedView& w, const float* in, int64_t m, float* y, double& acc) {
    matmul_n({MatmulOut{&w, y, w.shape.n}}, in, m, acc);
  };
  double& elementwise = prof_.elementwise;
  // The per-token elementwise work of a prefill chunk is split across the
  // pool; a decode token (T = 1) is too little work to pay for waking it.
  auto per_token = [&](const std::function<void(int64_t)>& fn) {
    if (T < 4 || pool_.size() == 1) {
      for (int64_t t = 0; t < T; ++t) fn(t);
      return;
    }
    pool_.parallel_for(T, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) fn(t);
    });
  };
  if (profiling_) {
    prof_.tokens += T;
    ++prof_.calls;
  }

  // Token embeddings (scaled for Gemma), and the RoPE angles of each position
  // (shared by all layers; sliding layers have their own). In a layer split
  // only the device holding layer 0 embeds; the others receive the stream below.
  const int64_t L0 = shard_.layer_begin, L1 = shard_.layer_end;
  // A layer split holds whole layers: its partial products are already the sums.
  const bool sum_partials = !shard_.layer_split(c_);
  {
    ScopeTimer timer(profiling_, elementwise);
    for (int64_t t = 0; t < T; ++t) {
      if (L0 == 0) embed(ids[t], x + t * D);
      if (L0 == 0 && c_.embed_scale != 1.0f)
        for (int64_t i = 0; i < D; ++i) x[t * D + i] *= c_.embed_scale;
      rope_angles(cos_sin_.data() + t * hd, (rope_long_ ? inv_freq_long_ : inv_freq_).data(), half,
                  static_cast<double>(pos + t) / c_.rope_linear_factor);
      if (c_.rope_mscale != 1.0f)
        for (int64_t i = 0; i < 2 * half; ++i) cos_sin_[t * hd + i] *= c_.rope_mscale;
      if (!inv_freq_local_.empty())
        rope_angles(cos_sin_local_.data() + t * hd, inv_freq_local_.data(), half, static_cast<double>(pos + t));
    }
  }
  // Split embeddings: each shard added its columns; the sum is the whole row on every shard.
  if (shard_.embd_begin != 0 || shard_.embd_end != D) comm_->all_reduce(x, T * D);
  if (L0 > 0) comm_->receive_hidden(x, T * D);

  for (int64_t l = L0; l < L1; ++l) {
    // Paged: layer l's bytes sit in a pager slot from here to the end of the
    // iteration (the lease releases it, also when something throws). The
    // pager and the KV cache count the shard's layers from 0.
    const int64_t li = l - L0;
    LayerLease lease(pager_.get(), static_cast<int>(li));
    const LayerWeights lw = pager_ ? rebase_layer(w_.layers[l], layer_base_[li], pager_->layer_size(li), lease.data())
                                   : w_.layers[l];
    const bool sliding = c_.is_sliding(l);
    const float* cos_sin = sliding && !cos_sin_local_.empty() ? cos_sin_local_.data() : cos_sin_.data();

    // Attention rmsnorm.
    {
      ScopeTimer timer(profiling_, elementwise);
      per_token([&](int64_t t) {
        rmsnorm(xb + t * D, x + t * D, lw.attn_norm, D, c_.norm_eps);
        if (c_.act_int8) act_int8_inplace(xb + t * D, D);
      });
    }

    // q, k, v for the local heads (+ Qwen2 biases), one shared table build.
    matmul_n({MatmulOut{&lw.wq, q_.data(), lw.wq.shape.n}, MatmulOut{&lw.wk, k_.data(), lw.wk.shape.n},
              MatmulOut{&lw.wv, v_.data(), lw.wv.shape.n}},
             xb, T, prof_.matmul_attn);
    // Biases, per-head q/k norms (Qwen3, Gemma 3), RoPE on q and k, then k and v
    // into the cache (each token its own row).
    {
      ScopeTimer timer(profiling_, elementwise);
      per_token([&](int64_t t) {
        float* qt = q_.data() + t * qd;
        float* kt = k_.data() + t * kvd;
        float* vt = v_.data() + t * kvd;
        if (lw.bq) axpy_f32(1.0f, lw.bq, qt, qd);
        if (lw.bk) axpy_f32(1.0f, lw.bk, kt, kvd);
        if (lw.bv) axpy_f32(1.0f, lw.bv, vt, kvd);
        if (lw.q_norm)
          for (int64_t h = 0; h < n_q_; ++h) rmsnorm(qt + h * hd, qt + h * hd, lw.q_norm, hd, c_.norm_eps);
        if (lw.k_norm)
          for (int64_t h = 0; h < n_kv_; ++h) rmsnorm(kt + h * hd, kt + h * hd, lw.k_norm, hd, c_.norm_eps);
        rope_inplace(qt, n_q_, hd, rd, cos_sin + t * hd, c_.rope_neox);
        rope_inplace(kt, n_kv_, hd, rd, cos_sin + t * hd, c_.rope_neox);
        kv_.store(li, pos + t, kt, vt);
      });
    }

    // Causal GQA attention over the cache; a sliding layer sees the last
    // sliding_window positions (from a ring or, masked, from a full cache).
    {
      ScopeTimer timer(profiling_, prof_.attention);
      // Work items are (head, token), head-major: a prefill chunk splits evenly
      // even when the head count does not divide by the thread count, and each
      // part still covers whole runs of positions of a head.
      pool_.parallel_for(n_q_ * T, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> att;  // scores of one (head, token)
        att.resize(static_cast<size_t>(kv_.n_ctx()));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t h = i / T, t = i % T;
          const int64_t n = sliding ? std::min(pos + t + 1, c_.sliding_window) : pos + t + 1;
          attn_head_fn(q_.data() + t * qd + h * hd, kv_.head(li, (q0 + h) / group - kv0, hd, pos + t + 1 - n), n, hd, att_scale,
                       att.data(), att_out_.data() + t * qd + h * hd);
        }
      });
    }

    // (BitNet: the heads' RMSNorm and int8 rounding), output projection of the local heads,
    // summed across shards, residual.
    if (lw.attn_sub_norm || c_.act_int8) {
      ScopeTimer timer(profiling_, elementwise);
      per_token([&](int64_t t) {
        float* a = att_out_.data() + t * qd;
        if (lw.attn_sub_norm) rmsnorm(a, a, lw.attn_sub_norm, qd, c_.norm_eps);
        if (c_.act_int8) act_int8_inplace(a, qd);
      });
    }
    matmul(lw.wo, att_out_.data(), T, xb, prof_.matmul_attn);
    if (sum_partials) comm_->all_reduce(xb, T * D);
    {
      ScopeTimer timer(profiling_, elementwise);
      // (Gemma: the output's own rmsnorm), residual, then the FFN rmsnorm.
      per_token([&](int64_t t) {
        if (lw.post_attn_norm) rmsnorm(xb + t * D, xb + t * D, lw.post_attn_norm, D, c_.norm_eps);
        axpy_f32(1.0f, xb + t * D, x + t * D, D);
        rmsnorm(xb + t * D, x + t * D, lw.ffn_norm, D, c_.norm_eps);
        if (c_.act_int8) act_int8_inplace(xb + t * D, D);
      });
    }
    // gate/up (one shared table build), SwiGLU or GeGLU, down (summed across
    // shards), (Gemma: its rmsnorm), residual.
    matmul_n({MatmulOut{&lw.w_gate, hb_.data(), F}, MatmulOut{&lw.w_up, hb2_.data(), F}}, xb, T,
             prof_.matmul_ffn);
    {
      ScopeTimer timer(profiling_, elementwise);
      per_token([&](int64_t t) {
        float* h = hb_.data() + t * F;
        if (c_.ffn_relu2)
          relu2_glu_inplace(h, hb2_.data() + t * F, F);
        else
          act_fn(h, hb2_.data() + t * F, F);
        if (lw.ffn_sub_norm) rmsnorm(h, h, lw.ffn_sub_norm, F, c_.norm_eps);
        if (c_.ffn_hadamard) block_hadamard(h, F, c_.ffn_hadamard);
        if (c_.act_int8) act_int8_inplace(h, F);
      });
    }
    matmul(lw.w_down, hb_.data(), T, xb, prof_.matmul_ffn);
    if (sum_partials) comm_->all_reduce(xb, T * D);
    {
      ScopeTimer timer(profiling_, elementwise);
      per_token([&](int64_t t) {
        if (lw.post_ffn_norm) rmsnorm(xb + t * D, xb + t * D, lw.post_ffn_norm, D, c_.norm_eps);
        axpy_f32(1.0f, xb + t * D, x + t * D, D);
      });
    }
  }

  // Layer split: on to the other devices' layers (a worker's pass ends its forward).
  if (L0 > 0 || L1 < c_.n_layers) comm_->pass_hidden(x, T * D);

  // Final rmsnorm and the lm_head, only for the rows whose logits are wanted
  // (a worker's shard has neither: lm_head() gives zeros).
  if (shard_.lm_head)
    for (int64_t t = first_logit; t < T; ++t) rmsnorm(xb + t * D, x + t * D, w_.output_norm, D, c_.norm_eps);
  lm_head(xb + first_logit * D, std::max<int64_t>(0, T - first_logit), out);
}

void Engine::lm_head(const float* xb, int64_t m, float* out) {
  ScopeTimer timer(profiling_ && m > 0, prof_.lm_head);
  if (!shard_.lm_head) {  // a worker's shard: its caller reads no logits
    std::fill(out, out + m * c_.vocab_size, 0.0f);
    return;
  }
  if (!out_paged_) {
    if (m > 0) lut_matmul(w_.lm_head, xb, m, c_.dim, out, c_.vocab_size, isa_, pool_);
    return;
  }
  // Paged: chunk c of row tiles is pager layer n_layers + c (of the shard's layers). Every chunk is
  // acquired even when no logits are wanted (a prefill chunk), so the loader's
  // order through the file stays the order of use.
  const PagedOutput& o = *out_paged_;
  for (size_t ch = 0; ch + 1 < o.chunk_tiles.size(); ++ch) {
    const int layer = static_cast<int>(shard_.n_layers() + static_cast<int64_t>(ch));
    LayerLease lease(pager_.get(), layer);
    if (m == 0) continue;
    const int64_t row0 = o.chunk_tiles[ch] * kTileRows;
    PackedView v;
    v.shape = o.lm_shape;
    v.shape.n = std::min<int64_t>(o.chunk_tiles[ch + 1] * kTileRows, o.lm_shape.n) - row0;
    v.codes = lease.data() + pager_->piece_offset(layer, 0);
    v.scales = reinterpret_cast<const uint16_t*>(lease.data() + pager_->piece_offset(layer, 1));
    v.mins = o.lm_shape.asym ? reinterpret_cast<const uint16_t*>(lease.data() + pager_->piece_offset(layer, 2))
                             : nullptr;
    lut_matmul(v, xb, m, c_.dim, out + row0, c_.vocab_size, isa_, pool_);
  }
}

void Engine::eval(const int32_t* ids, int64_t n, int64_t start_pos, float* logits, bool all_logits,
                  int64_t rope_end) {
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
  const double before = prof_.matmul_attn + prof_.matmul_ffn + prof_.lm_head + prof_.attention + prof_.elementwise;
  // A ring must still hold the window before start_pos (truncate() checks it for callers that reuse a prefix).
  require(kv_.holds(start_pos - c_.sliding_window + 1, start_pos),
          "eval: the sliding-window KV ring no longer holds the positions before " + std::to_string(start_pos) +
              "; evaluate from position 0 (or truncate first)");
  n_past_ = start_pos;  // positions after start_pos are forgotten
  // The workers of a tensor-parallel group decide by their own call's end; they are not told rope_end.
  require(rope_end <= start_pos + n || inv_freq_long_.empty() ||
              dynamic_cast<const NullCommunicator*>(comm_.get()) != nullptr,
          "eval: rope_end is not passed to tensor-parallel workers");
  rope_long_ = !inv_freq_long_.empty() && std::max(start_pos + n, rope_end) > c_.rope_original_ctx;
  if (!rope_long_at_.empty())
    std::fill(rope_long_at_.begin() + start_pos, rope_long_at_.begin() + start_pos + n, rope_long_ ? 1 : 0);
  comm_->begin_eval(ids, n, start_pos);
  const int64_t C = opt_.prefill_chunk, V = c_.vocab_size;
  for (int64_t c0 = 0; c0 < n; c0 += C) {
    const int64_t T = std::min(C, n - c0);
    if (!logits) {
      forward(ids + c0, T, start_pos + c0, T, nullptr);
    } else if (all_logits) {
      forward(ids + c0, T, start_pos + c0, 0, logits + c0 * V);
    } else {
      const bool last = c0 + T == n;
      forward(ids + c0, T, start_pos + c0, last ? T - 1 : T, logits);
    }
    n_past_ = start_pos + c0 + T;
  }
  if (profiling_) {
    const double parts =
        prof_.matmul_attn + prof_.matmul_ffn + prof_.lm_head + prof_.attention + prof_.elementwise - before;
    prof_.other += seconds_since(t0) - parts;
  }
}

void Engine::truncate(int64_t n) {
  require(n >= 0 && n <= n_past_, "truncate: keep count " + std::to_string(n) + " must be in [0, " +
                                       std::to_string(n_past_) + "] (tokens in the KV cache)");
  // A ring overwritten past the window before n cannot continue from n: start over.
  n_past_ = kv_.holds(n - c_.sliding_window + 1, n) ? n : 0;
}

int64_t Engine::reusable_prefix(int64_t n, int64_t total) const {
  require(n >= 0 && n <= n_past_ && total >= n, "reusable_prefix: need 0 <= n <= n_past (" +
                                                    std::to_string(n_past_) + ") and total >= n, got n " +
                                                    std::to_string(n) + ", total " + std::to_string(total));
  if (rope_long_at_.empty()) return n;
  const uint8_t want = total > c_.rope_original_ctx ? 1 : 0;
  int64_t m = 0;
  while (m < n && rope_long_at_[m] == want) ++m;
  return m;
}

std::vector<uint8_t> Engine::kv_snapshot() const {
  require(dynamic_cast<const NullCommunicator*>(comm_.get()) != nullptr,
          "kv snapshot: a tensor-parallel shard cannot keep its cache alone");
  std::vector<uint8_t> out = kv_.snapshot(n_past_);
  // LongRoPE: the factors each key was rotated with travel with the keys, so a
  // restored conversation can still reuse its prefix (reusable_prefix).
  if (!rope_long_at_.empty()) out.insert(out.end(), rope_long_at_.begin(), rope_long_at_.begin() + n_past_);
  return out;
}

void Engine::kv_restore(const uint8_t* data, size_t size, int64_t n) {
  require(dynamic_cast<const NullCommunicator*>(comm_.get()) != nullptr,
          "kv restore: a tensor-parallel shard cannot restore its cache alone");
  // The size is checked before the record is read: in a blob of the wrong
  // size the last n bytes may be keys.
  const size_t record = rope_long_at_.empty() || n < 0 ? 0 : static_cast<size_t>(n);
  require(size >= record && kv_.is_snapshot(size - record, n),
          "kv restore: " + std::to_string(size) + " bytes are not a snapshot of " + std::to_string(n) +
              " positions of this cache");
  for (size_t i = 0; i < record; ++i)
    require(data[size - record + i] <= 2, "kv restore: the snapshot's RoPE factor record is corrupt");
  kv_.restore(data, size - record, n);
  std::copy(data + size - record, data + size, rope_long_at_.begin());
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
