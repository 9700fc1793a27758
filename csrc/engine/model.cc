// Config and shard checks, weight binding and the in-process communicator.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "model.h"

namespace edgelut {

namespace {
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}
std::string shape_str(int64_t a, int64_t b = -1) {
  return "(" + std::to_string(a) + (b >= 0 ? ", " + std::to_string(b) : std::string(",")) + ")";
}
}  // namespace

void Config::validate() const {
  require(architecture == "llama" || architecture == "qwen2" || architecture == "qwen3" || architecture == "gemma3" ||
              architecture == "phi3" || architecture == "bitnet",
          "config: architecture must be 'llama', 'qwen2', 'qwen3', 'gemma3', 'phi3' or 'bitnet', got '" + architecture +
              "'");
  require(!(ffn_gelu && ffn_relu2), "config: ffn_gelu and ffn_relu2 are exclusive");
  auto positive = [](int64_t v, const char* name) {
    require(v > 0, std::string("config: ") + name + " must be positive, got " + std::to_string(v));
  };
  positive(dim, "dim");
  positive(hidden_dim, "hidden_dim");
  positive(n_layers, "n_layers");
  positive(n_heads, "n_heads");
  positive(n_kv_heads, "n_kv_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  require(n_heads % n_kv_heads == 0, "config: n_heads (" + std::to_string(n_heads) +
                                         ") is not a multiple of n_kv_heads (" + std::to_string(n_kv_heads) + ")");
  require(head_dim % 2 == 0, "config: head_dim must be even for RoPE, got " + std::to_string(head_dim));
  require(norm_eps > 0, "config: norm_eps must be positive");
  require(rope_theta > 0, "config: rope_theta must be positive");
  require(rope_linear_factor > 0, "config: rope_linear_factor must be positive");
  require(rope_mscale > 0, "config: rope_mscale must be positive");
  require(rope_dim >= 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
          "config: rope_dim must be even and in [0, head_dim], got " + std::to_string(rope_dim));
  require(rope_freq_factors.empty() || static_cast<int64_t>(rope_freq_factors.size()) == rotary_dim() / 2,
          "config: rope_freq_factors must have rope_dim / 2 = " + std::to_string(rotary_dim() / 2) +
              " entries, got " + std::to_string(rope_freq_factors.size()));
  for (float f : rope_freq_factors) require(f > 0, "config: rope_freq_factors must be positive");
  require(rope_long_factors.empty() || static_cast<int64_t>(rope_long_factors.size()) == rotary_dim() / 2,
          "config: rope_long_factors must have rope_dim / 2 = " + std::to_string(rotary_dim() / 2) +
              " entries, got " + std::to_string(rope_long_factors.size()));
  for (float f : rope_long_factors) require(f > 0, "config: rope_long_factors must be positive");
  require(rope_long_factors.empty() || rope_original_ctx > 0,
          "config: rope_long_factors need rope_original_ctx > 0, got " + std::to_string(rope_original_ctx));
  require(embed_scale > 0, "config: embed_scale must be positive");
  require(attn_scale >= 0, "config: attn_scale must be >= 0 (0: 1 / sqrt(head_dim))");
  require(sliding_window >= 0 && sliding_window_pattern >= 0,
          "config: sliding_window and sliding_window_pattern must be >= 0");
  require(rope_local_theta >= 0, "config: rope_local_theta must be >= 0 (0: rope_theta)");
  require(ffn_hadamard == 0 || (ffn_hadamard > 1 && (ffn_hadamard & (ffn_hadamard - 1)) == 0 &&
                                hidden_dim % ffn_hadamard == 0),
          "config: ffn_hadamard must be 0 or a power of two dividing hidden_dim, got " + std::to_string(ffn_hadamard));
}

ShardSpec ShardSpec::resolved(const Config& c) const {
  ShardSpec s = *this;
  if (s.q_head_end < 0) s.q_head_end = c.n_heads;
  if (s.ffn_end < 0) s.ffn_end = c.hidden_dim;
  require(0 <= s.q_head_begin && s.q_head_begin < s.q_head_end && s.q_head_end <= c.n_heads,
          "shard: q heads [" + std::to_string(s.q_head_begin) + ", " + std::to_string(s.q_head_end) +
              ") must be a non-empty range inside [0, " + std::to_string(c.n_heads) + ")");
  require(0 <= s.ffn_begin && s.ffn_begin < s.ffn_end && s.ffn_end <= c.hidden_dim,
          "shard: FFN columns [" + std::to_string(s.ffn_begin) + ", " + std::to_string(s.ffn_end) +
              ") must be a non-empty range inside [0, " + std::to_string(c.hidden_dim) + ")");
  if (s.embd_end < 0) s.embd_end = c.dim;
  require(0 <= s.embd_begin && s.embd_begin < s.embd_end && s.embd_end <= c.dim,
          "shard: embedding columns [" + std::to_string(s.embd_begin) + ", " + std::to_string(s.embd_end) +
              ") must be a non-empty range inside [0, " + std::to_string(c.dim) + ")");
  if (s.layer_end < 0) s.layer_end = c.n_layers;
  require(0 <= s.layer_begin && s.layer_begin < s.layer_end && s.layer_end <= c.n_layers,
          "shard: layers [" + std::to_string(s.layer_begin) + ", " + std::to_string(s.layer_end) +
              ") must be a non-empty range inside [0, " + std::to_string(c.n_layers) + ")");
  // One split at a time: a layer range holds whole layers and embeds whole rows (or none).
  require(!s.layer_split(c) || (s.q_head_begin == 0 && s.q_head_end == c.n_heads && s.ffn_begin == 0 &&
                                s.ffn_end == c.hidden_dim && s.embd_begin == 0 && s.embd_end == c.dim),
          "shard: a layer range holds every head, FFN and embedding column of its layers");
  require(!s.layer_split(c) || s.lm_head == (s.layer_begin == 0),
          "shard: in a layer split the device holding layer 0 (the coordinator) holds the lm_head, and only it");
  const int64_t group = c.n_heads / c.n_kv_heads;
  s.kv_head_begin = s.q_head_begin / group;
  s.kv_head_end = (s.q_head_end - 1) / group + 1;
  // The online Hadamard runs on whole blocks of the activation: a shard holds whole blocks.
  require(c.ffn_hadamard == 0 || (s.ffn_begin % c.ffn_hadamard == 0 && s.ffn_end % c.ffn_hadamard == 0),
          "shard: FFN columns [" + std::to_string(s.ffn_begin) + ", " + std::to_string(s.ffn_end) +
              ") must be whole blocks of the model's ffn_hadamard (" + std::to_string(c.ffn_hadamard) + ")");
  return s;
}

Weights bind_weights(const Config& c, const ShardSpec& shard, const WeightLookup& lookup) {
  const int64_t n_q = shard.n_q_heads(), n_kv = shard.n_kv_heads();
  const int64_t qd = n_q * c.head_dim, kvd = n_kv * c.head_dim, F = shard.n_ffn(), D = c.dim;

  auto packed = [&](const std::string& name, int64_t n, int64_t k) {
    WeightRef r;
    require(lookup(name, &r), "missing tensor '" + name + "'");
    require(r.packed, "tensor '" + name + "' must be a packed matrix (linear layers run on the LUT kernels)");
    require(r.view.shape.n == n && r.view.shape.k == k,
            "tensor '" + name + "' has shape " + shape_str(r.view.shape.n, r.view.shape.k) + " but this shard needs " +
                shape_str(n, k));
    return r.view;
  };
  auto vec = [&](const std::string& name, int64_t n, bool required) -> const float* {
    WeightRef r;
    if (!lookup(name, &r)) {
      require(!required, "missing tensor '" + name + "'");
      return nullptr;
    }
    require(!r.packed, "tensor '" + name + "' must be float32, not packed");
    require(r.shape.size() == 1 && r.shape[0] == n,
            "tensor '" + name + "' must have shape " + shape_str(n) + " for this shard");
    return r.data;
  };

  // A sub-norm is an RMS over the whole attention output / FFN width, which a shard does not hold.
  require(!c.sub_norms || (qd == c.n_heads * c.head_dim && F == c.hidden_dim),
          "shard: a model with sub-norms (BitNet) cannot be split across shards");
  Weights w;
  w.layers.resize(static_cast<size_t>(c.n_layers));  // bound for the shard's layer range only
  // A layer range after layer 0 takes its input from the previous device: no embeddings.
  if (shard.layer_begin == 0) {
    WeightRef r;
    require(lookup("token_embd.weight", &r), "missing tensor 'token_embd.weight'");
    w.embd_packed = r.packed;
    // The whole table, or (a shard with split embeddings) its columns only.
    const int64_t cols = r.packed ? r.view.shape.k : (r.shape.size() == 2 ? r.shape[1] : -1);
    const int64_t rows = r.packed ? r.view.shape.n : (r.shape.empty() ? -1 : r.shape[0]);
    require(rows == c.vocab_size && (cols == D || cols == shard.n_embd()),
            "tensor 'token_embd.weight' must have shape " + shape_str(c.vocab_size, D) +
                (shard.n_embd() != D ? " or " + shape_str(c.vocab_size, shard.n_embd()) : std::string()));
    w.embd_cols = cols;
    if (r.packed)
      w.token_embd_packed = r.view;
    else
      w.token_embd = r.data;
    WeightRef out;
    if (!shard.lm_head) {
      // A worker's shard: no logits, so no lm_head (its file may still hold a tied token_embd).
    } else if (lookup("output.weight", &out)) {
      w.lm_head = packed("output.weight", c.vocab_size, D);
    } else {
      require(r.packed && w.embd_cols == D,
              "missing tensor 'output.weight' and 'token_embd.weight' is not packed: the lm_head runs on the LUT "
              "kernels, so pass a packed output.weight (or a packed token_embd.weight for tied embeddings)");
      w.lm_head = w.token_embd_packed;
    }
  }
  w.output_norm = vec("output_norm.weight", D, shard.lm_head);
  for (int64_t l = shard.layer_begin; l < shard.layer_end; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights lw;
    lw.attn_norm = vec(p + "attn_norm.weight", D, true);
    lw.wq = packed(p + "attn_q.weight", qd, D);
    lw.wk = packed(p + "attn_k.weight", kvd, D);
    lw.wv = packed(p + "attn_v.weight", kvd, D);
    lw.bq = vec(p + "attn_q.bias", qd, c.attn_bias);
    lw.bk = vec(p + "attn_k.bias", kvd, c.attn_bias);
    lw.bv = vec(p + "attn_v.bias", kvd, c.attn_bias);
    // The q/k norms act on one head at a time, so every shard holds them whole.
    lw.q_norm = c.qk_norm ? vec(p + "attn_q_norm.weight", c.head_dim, true) : nullptr;
    lw.k_norm = c.qk_norm ? vec(p + "attn_k_norm.weight", c.head_dim, true) : nullptr;
    lw.attn_sub_norm = c.sub_norms ? vec(p + "attn_sub_norm.weight", qd, true) : nullptr;
    lw.wo = packed(p + "attn_output.weight", D, qd);
    lw.post_attn_norm = c.post_norms ? vec(p + "post_attention_norm.weight", D, true) : nullptr;
    lw.ffn_norm = vec(p + "ffn_norm.weight", D, true);
    lw.w_gate = packed(p + "ffn_gate.weight", F, D);
    lw.w_up = packed(p + "ffn_up.weight", F, D);
    lw.ffn_sub_norm = c.sub_norms ? vec(p + "ffn_sub_norm.weight", F, true) : nullptr;
    lw.w_down = packed(p + "ffn_down.weight", D, F);
    lw.post_ffn_norm = c.post_norms ? vec(p + "post_ffw_norm.weight", D, true) : nullptr;
    w.layers[l] = lw;
  }
  return w;
}

LayerWeights rebase_layer(const LayerWeights& lw, const uint8_t* from, uint64_t size, const uint8_t* to) {
  // Integer compares: the pointers may belong to different allocations.
  const uintptr_t lo = reinterpret_cast<uintptr_t>(from);
  auto move = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    const uintptr_t b = reinterpret_cast<uintptr_t>(p);
    if (!p || b < lo || b - lo >= size) return p;
    return reinterpret_cast<T*>(to + (b - lo));
  };
  auto move_view = [&](PackedView v) {
    v.codes = move(v.codes);
    v.scales = move(v.scales);
    v.mins = move(v.mins);
    return v;
  };
  LayerWeights out = lw;
  out.attn_norm = move(lw.attn_norm);
  out.wq = move_view(lw.wq);
  out.wk = move_view(lw.wk);
  out.wv = move_view(lw.wv);
  out.bq = move(lw.bq);
  out.bk = move(lw.bk);
  out.bv = move(lw.bv);
  out.q_norm = move(lw.q_norm);
  out.k_norm = move(lw.k_norm);
  out.attn_sub_norm = move(lw.attn_sub_norm);
  out.wo = move_view(lw.wo);
  out.post_attn_norm = move(lw.post_attn_norm);
  out.post_ffn_norm = move(lw.post_ffn_norm);
  out.ffn_norm = move(lw.ffn_norm);
  out.w_gate = move_view(lw.w_gate);
  out.w_up = move_view(lw.w_up);
  out.ffn_sub_norm = move(lw.ffn_sub_norm);
  out.w_down = move_view(lw.w_down);
  return out;
}

void check_layer_within(const LayerWeights& lw, int64_t layer, const uint8_t* from, uint64_t size) {
  const std::pair<const char*, const PackedView*> views[] = {
      {"attn_q", &lw.wq},       {"attn_k", &lw.wk},   {"attn_v", &lw.wv},       {"attn_output", &lw.wo},
      {"ffn_gate", &lw.w_gate}, {"ffn_up", &lw.w_up}, {"ffn_down", &lw.w_down},
  };
  for (const auto& [name, v] : views) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(v->codes), lo = reinterpret_cast<uintptr_t>(from);
    require(b >= lo && b - lo + static_cast<uint64_t>(v->shape.total_bytes()) <= size,
            "paging: tensor 'blk." + std::to_string(layer) + "." + name +
                ".weight' lies outside the byte range of layer " + std::to_string(layer));
  }
}

void Communicator::pass_hidden(float*, int64_t) {
  throw std::logic_error("this communicator does not carry a layer split (pass_hidden)");
}
void Communicator::receive_hidden(float*, int64_t) {
  throw std::logic_error("this communicator does not carry a layer split (receive_hidden)");
}

namespace {
// Ranks meet in all_reduce; the last to arrive sums every buffer (in rank
// order, so the result is deterministic) into all of them and releases the rest.
struct LocalGroupState {
  explicit LocalGroupState(int n) : bufs(n, nullptr) {}
  std::mutex mu;
  std::condition_variable cv;
  std::vector<float*> bufs;
  std::vector<float> sum;
  int arrived = 0;
  int64_t n = -1;
  uint64_t generation = 0;
  // Layer split: the residual stream and the rank that runs on it next (0:
  // back at the coordinator). The coordinator hands it out, every worker
  // passes it to the next rank, the last one back to rank 0.
  std::vector<float> hidden;
  int hidden_owner = 0;
};

class LocalCommunicator : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroupState> st, int rank) : st_(std::move(st)), rank_(rank) {}
  void all_reduce(float* data, int64_t n) override {
    LocalGroupState& s = *st_;
    std::unique_lock<std::mutex> lock(s.mu);
    if (s.arrived == 0) s.n = n;
    if (s.n != n) throw std::runtime_error("local all_reduce: ranks passed different sizes");
    s.bufs[rank_] = data;
    if (++s.arrived < static_cast<int>(s.bufs.size())) {
      const uint64_t gen = s.generation;
      s.cv.wait(lock, [&] { return s.generation != gen; });
      return;
    }
    s.sum.assign(static_cast<size_t>(n), 0.0f);
    for (float* b : s.bufs)
      for (int64_t i = 0; i < n; ++i) s.sum[i] += b[i];
    for (float* b : s.bufs) std::copy(s.sum.begin(), s.sum.end(), b);
    s.arrived = 0;
    ++s.generation;
    s.cv.notify_all();
  }
  void pass_hidden(float* data, int64_t n) override {
    LocalGroupState& s = *st_;
    std::unique_lock<std::mutex> lock(s.mu);
    const int ranks = static_cast<int>(s.bufs.size());
    s.hidden.assign(data, data + n);
    s.hidden_owner = rank_ + 1 < ranks ? rank_ + 1 : 0;
    s.cv.notify_all();
    if (rank_ != 0) return;
    s.cv.wait(lock, [&] { return s.hidden_owner == 0; });
    if (static_cast<int64_t>(s.hidden.size()) != n) throw std::runtime_error("local pipeline: sizes differ");
    std::copy(s.hidden.begin(), s.hidden.end(), data);
  }
  void receive_hidden(float* data, int64_t n) override {
    LocalGroupState& s = *st_;
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return s.hidden_owner == rank_; });
    if (static_cast<int64_t>(s.hidden.size()) != n) throw std::runtime_error("local pipeline: sizes differ");
    std::copy(s.hidden.begin(), s.hidden.end(), data);
  }

 private:
  std::shared_ptr<LocalGroupState> st_;
  int rank_;
};
}  // namespace

std::vector<std::shared_ptr<Communicator>> make_local_group(int n_ranks) {
  require(n_ranks >= 1, "local group: need at least one rank, got " + std::to_string(n_ranks));
  auto st = std::make_shared<LocalGroupState>(n_ranks);
  std::vector<std::shared_ptr<Communicator>> out;
  for (int r = 0; r < n_ranks; ++r) out.push_back(std::make_shared<LocalCommunicator>(st, r));
  return out;
}

}  // namespace edgelut
