// The llama-family decoder (Llama, SmolLM2, Mistral, Qwen2/3, Gemma 3) on LUT kernels,
// in the shape of llama2.c's run.c: Config, Weights and State with the shape
// of every buffer, and one forward() that reads straight down.
//
// Tensor parallelism is built in rather than bolted on: an Engine holds one
// *shard* (a contiguous range of q heads with the kv heads they read, and a
// range of FFN columns) and a Communicator that sums partial results after the
// attention output projection and after ffn_down. One device = the whole
// model and a no-op communicator; the code path is the same.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../io/pager.h"
#include "../kernels/cpu_isa.h"
#include "../kernels/layout.h"
#include "../kernels/lut_ops.h"
#include "kv_cache.h"
#include "sampler.h"
#include "thread_pool.h"

namespace edgelut {

struct Config {
  std::string architecture = "llama";  // "llama", "qwen2", "qwen3" or "gemma3" (the switches below say what differs)
  int64_t dim = 0;                     // hidden size
  int64_t hidden_dim = 0;              // FFN intermediate size
  int64_t n_layers = 0;
  int64_t n_heads = 0;                 // query heads
  int64_t n_kv_heads = 0;              // key/value heads (GQA: n_heads % n_kv_heads == 0)
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;                // leading dims of each head RoPE rotates; 0: head_dim (partial: Phi-4-mini)
  float rope_mscale = 1.0f;            // cos and sin times this (LongRoPE's attention factor, Phi-3)
  bool rope_neox = true;               // false: adjacent pairs (GPT-J / Meta layout)
  float rope_linear_factor = 1.0f;     // linear position scaling (positions / factor)
  std::vector<float> rope_freq_factors; // (rope_dim / 2) divisors of each frequency (Llama 3.1, LongRoPE), or empty
  // LongRoPE (Phi-3): past rope_original_ctx the long factors replace rope_freq_factors (the
  // short ones). As in Hugging Face's Phi-3, an eval call whose positions reach beyond the
  // original context rotates all its tokens with the long factors; keys already cached keep theirs.
  std::vector<float> rope_long_factors; // (rope_dim / 2), or empty: no switch
  int64_t rope_original_ctx = 0;        // positions of the short factors (with rope_long_factors)

  int64_t rotary_dim() const { return rope_dim > 0 ? rope_dim : head_dim; }
  bool attn_bias = false;              // q/k/v biases (Qwen2)
  bool tie_embeddings = false;         // lm_head = token_embd
  // Per-family switches (models/config.py ArchTraits): one forward pass for every family.
  bool qk_norm = false;                // RMSNorm over each q and k head before RoPE (Qwen3, Gemma 3)
  bool post_norms = false;             // RMSNorm of the attention / FFN output before the residual (Gemma 3)
  bool ffn_gelu = false;               // GeGLU with the tanh GELU instead of SwiGLU (Gemma)
  bool ffn_relu2 = false;              // squared-ReLU gate instead of SwiGLU (BitNet b1.58 2B-4T)
  bool sub_norms = false;              // RMSNorm of the attention output before wo, of gate*up before down (BitNet)
  bool act_int8 = false;               // linear inputs rounded to int8 per token, absmax scale (BitNet)
  float embed_scale = 1.0f;            // token embeddings times this (Gemma: sqrt(dim))
  float attn_scale = 0.0f;             // q.k scale; 0: 1 / sqrt(head_dim)
  int64_t sliding_window = 0;          // positions a sliding layer sees, itself included; 0: none
  int64_t sliding_window_pattern = 0;  // layer l is global iff (l + 1) % pattern == 0 (0: all sliding)
  float rope_local_theta = 0.0f;       // RoPE base of sliding layers (0: rope_theta); they run unscaled
  int64_t ffn_hadamard = 0;            // Hadamard block applied to the FFN activation before ffn_down (0: none)

  bool is_sliding(int64_t layer) const {
    return sliding_window > 0 && (sliding_window_pattern <= 0 || (layer + 1) % sliding_window_pattern != 0);
  }

  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// Which part of every layer this process holds. Ranges are half-open; an
// end of -1 means "to the end". A shard holds a contiguous range of q heads
// (any split, not only whole GQA groups); its kv heads are every kv head one
// of those q heads reads, so a kv head whose group straddles two shards has
// its K/V projection (and cache) on both. The FFN columns are a range of the
// intermediate size. lm_head = false: the shard computes no logits (a
// worker; the coordinator's shard holds the lm_head and samples).
//
// embd columns: the columns of the token embeddings this shard adds to the
// residual stream. When they are not all of them, each shard embeds a token
// into its columns only and one all-reduce joins the row, so a worker's file
// holds a (vocab, its columns) slice of the table instead of all of it.
//
// layers: the range of layers this shard runs (a layer split, `edgelut shard
// --split layers`): all heads and FFN columns of layers [layer_begin,
// layer_end) and a KV cache for those only. The shard holding layer 0 embeds
// the tokens; the others take the residual stream from their communicator
// (receive_hidden) and hand it on after their last layer (pass_hidden). A
// shard is either a layer range or a head/column slice of every layer.
struct ShardSpec {
  int64_t q_head_begin = 0, q_head_end = -1;
  int64_t ffn_begin = 0, ffn_end = -1;
  bool lm_head = true;
  int64_t embd_begin = 0, embd_end = -1;
  int64_t layer_begin = 0, layer_end = -1;
  // Derived by resolved(): the kv heads the q heads need.
  int64_t kv_head_begin = 0, kv_head_end = -1;

  // Fills in -1 ends and the kv range and checks the ranges against the config.
  ShardSpec resolved(const Config& c) const;
  int64_t n_q_heads() const { return q_head_end - q_head_begin; }
  int64_t n_kv_heads() const { return kv_head_end - kv_head_begin; }
  int64_t n_ffn() const { return ffn_end - ffn_begin; }
  int64_t n_embd() const { return embd_end - embd_begin; }
  int64_t n_layers() const { return layer_end - layer_begin; }
  // Resolved: a layer split (runs some layers only) rather than all of them.
  bool layer_split(const Config& c) const { return layer_begin != 0 || layer_end != c.n_layers; }
};

// Sums partial results across shards. all_reduce must leave the same sum in
// data on every shard. The default is one shard: nothing to do.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual void all_reduce(float* data, int64_t n) = 0;
  // Called by Engine::eval before its first forward pass: a coordinator tells
  // its workers to run the same eval (csrc/net/coordinator.h).
  virtual void begin_eval(const int32_t* /*ids*/, int64_t /*n*/, int64_t /*start_pos*/) {}
  // A layer split (ShardSpec layers): the residual stream (n floats) leaves
  // this device's layers. A worker sends it on; the coordinator (layer 0, the
  // final norm and the lm_head) has it run through every other device's
  // layers in rank order and gets the last one's output back in data.
  virtual void pass_hidden(float* data, int64_t n);
  // A device whose layers do not start at 0 waits here for its input.
  virtual void receive_hidden(float* data, int64_t n);
};

class NullCommunicator : public Communicator {
 public:
  void all_reduce(float*, int64_t) override {}
};

// In-process all-reduce for n shards running on n threads (tests, and a
// template for real transports): each call blocks until every rank arrived.
std::vector<std::shared_ptr<Communicator>> make_local_group(int n_ranks);

// One tensor as the weight source hands it over: packed (linear layers,
// optionally the embedding) or float32 (norms, biases, optionally the
// embedding). The memory must outlive the engine (see Engine's keepalive).
struct WeightRef {
  bool packed = false;
  PackedView view;                // when packed
  const float* data = nullptr;    // when float
  std::vector<int64_t> shape;     // when float
};
// Returns false when the tensor is absent.
using WeightLookup = std::function<bool(const std::string& name, WeightRef* out)>;

struct LayerWeights {
  const float* attn_norm;   // (dim)
  PackedView wq;            // (n_q * head_dim, dim)      local q heads
  PackedView wk;            // (n_kv * head_dim, dim)     local kv heads
  PackedView wv;            // (n_kv * head_dim, dim)
  const float* bq;          // (n_q * head_dim) or null
  const float* bk;          // (n_kv * head_dim) or null
  const float* bv;          // (n_kv * head_dim) or null
  const float* q_norm;      // (head_dim) shared by every q head, or null
  const float* k_norm;      // (head_dim) or null
  const float* attn_sub_norm;  // (n_q * head_dim) or null (BitNet; whole model only, never a shard)
  PackedView wo;            // (dim, n_q * head_dim)      local columns
  const float* post_attn_norm;  // (dim) or null
  const float* ffn_norm;    // (dim)
  PackedView w_gate;        // (n_ffn, dim)               local rows
  PackedView w_up;          // (n_ffn, dim)
  const float* ffn_sub_norm;  // (n_ffn) or null (BitNet)
  PackedView w_down;        // (dim, n_ffn)               local columns
  const float* post_ffn_norm;   // (dim) or null
};

struct Weights {
  bool embd_packed = false;
  int64_t embd_cols = 0;              // columns of token_embd: dim, or the shard's embd columns
  const float* token_embd = nullptr;  // (vocab, dim) when float
  PackedView token_embd_packed;       // (vocab, dim) when packed
  std::vector<LayerWeights> layers;   // (n_layers)
  const float* output_norm = nullptr; // (dim)
  PackedView lm_head;                 // (vocab, dim): output.weight or the packed token_embd; unset without ShardSpec::lm_head
};

// The same layer with every pointer inside [from, from + size) moved to the
// same place in [to, to + size); pointers elsewhere are kept. This is how a
// layer bound against the model file's mapping is read from a pager slot.
LayerWeights rebase_layer(const LayerWeights& lw, const uint8_t* from, uint64_t size, const uint8_t* to);
// Throws std::invalid_argument naming the tensor if a packed weight of lw
// does not lie inside [from, from + size).
void check_layer_within(const LayerWeights& lw, int64_t layer, const uint8_t* from, uint64_t size);

// The ONE place weights are bound, by GGUF-style name ("blk.3.attn_q.weight").
// Shapes are the shard-local ones. Throws std::invalid_argument naming the
// tensor that is missing or mis-shaped.
Weights bind_weights(const Config& c, const ShardSpec& shard, const WeightLookup& lookup);

// The token embeddings and the lm_head read through the pager instead of
// pinned (PagingOptions::page_output). The lm_head's row tiles are split into
// chunks that are pager layers n_layers, n_layers + 1, ..., each read as three
// pieces (its codes, scales and mins); a token's embedding row is read from
// the file when it is needed (one row tile of a packed token_embd).
struct PagedOutput {
  PackedShape lm_shape;              // the whole lm_head (vocab, dim)
  std::vector<int64_t> chunk_tiles;  // (n_chunks + 1) chunk c holds row tiles [chunk_tiles[c], chunk_tiles[c + 1])
  bool embd_packed = true;
  PackedShape embd_shape;            // token_embd's shape when packed
  uint64_t embd_offset = 0;          // file offset of token_embd's bytes
};

struct EngineOptions {
  int64_t n_ctx = 2048;
  int n_threads = 0;            // 0 = all cores
  KvType kv_type = KvType::kF16;
  int64_t prefill_chunk = 64;   // tokens per GEMM pass during prefill
  std::string isa;              // "" = best for this CPU
  std::string matmul_path;      // "" / "auto": per call (lut_ops.h); "lut" or "int8" force one
  // Sliding-window layers keep every position and mask to the window, instead
  // of a ring of the window (the reference the ring is tested against).
  bool swa_full_cache = false;
};

// Time per part of the forward pass, accumulated (seconds).
struct Profile {
  double matmul_attn = 0, matmul_ffn = 0, lm_head = 0, attention = 0, other = 0;
  // Parts of the above: activation tables / int8 activations of every matmul
  // (inside matmul_* and lm_head), and norms + RoPE + residuals + SwiGLU +
  // embeddings (outside; `other` is what is left: KV stores, overhead).
  double tables = 0, elementwise = 0;
  int64_t tokens = 0, calls = 0;
};

struct GenerateOptions {
  int64_t max_tokens = 128;
  std::vector<int32_t> eos;      // stop after sampling one of these (it is returned)
  SamplerParams sampler;
  std::vector<int32_t> history;  // tokens before `ids` (for the repetition penalty)
};

struct GenerateResult {
  std::vector<int32_t> tokens;   // sampled tokens, in order
  std::string stop_reason;       // "eos", "length" (max_tokens), "context" (n_ctx full), "callback"
  int64_t n_prefill = 0, n_decode = 0;
  double prefill_s = 0, decode_s = 0;
};

class Engine {
 public:
  // keepalive owns whatever the WeightLookup's pointers point into.
  Engine(const Config& c, const WeightLookup& lookup, const EngineOptions& o, const ShardSpec& shard = {},
         std::shared_ptr<Communicator> comm = nullptr, std::shared_ptr<void> keepalive = nullptr);
  // Throws std::invalid_argument for options the constructor would refuse, so a
  // caller can tell bad options from bad weights before building an engine.
  static void check_options(const EngineOptions& o);

  const Config& config() const { return c_; }
  const ShardSpec& shard() const { return shard_; }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  int64_t n_past() const { return n_past_; }
  int n_threads() const { return pool_.size(); }
  int64_t prefill_chunk() const { return opt_.prefill_chunk; }
  size_t kv_bytes() const { return kv_.nbytes(); }

  // Runs ids (n tokens) at positions start_pos.. and writes logits: of the
  // last token (vocab floats) or of every token (n * vocab) when all_logits.
  // start_pos may be at most n_past() (positions after it are overwritten and
  // forgotten). Throws std::invalid_argument for bad ids or positions.
  // logits may be null: no lm_head at all (a tensor-parallel worker).
  // rope_end: when this call is one block of a sequence of rope_end positions
  // (perplexity's blocks), LongRoPE picks its factors by that length, as one
  // call over the whole sequence would; 0 = start_pos + n.
  void eval(const int32_t* ids, int64_t n, int64_t start_pos, float* logits, bool all_logits,
            int64_t rope_end = 0);

  // Forgets positions >= n (prompt-cache reuse keeps a common prefix). With
  // sliding-window rings it forgets everything when the ring no longer holds
  // the window before n (it was overwritten by later positions): read n_past().
  void truncate(int64_t n);
  void reset() { truncate(0); }

  // How many of the first n cached positions a call that continues them up to
  // `total` positions may keep. LongRoPE (Phi-3) rotates every position of an
  // eval call with the short or the long factors by where the call ends, so
  // keys rotated the other way (or restored from a snapshot, whose factors
  // are not recorded) would give other logits than evaluating from 0. n when
  // the model has no LongRoPE.
  int64_t reusable_prefix(int64_t n, int64_t total) const;

  // Positions [0, n_past()) of the KV cache as bytes, and back (KvCache::snapshot):
  // a prompt cache of several conversations. Not for a tensor-parallel shard
  // (the other devices' caches would not follow): std::invalid_argument. With
  // LongRoPE the bytes end with one byte per position (rope_long_at_).
  std::vector<uint8_t> kv_snapshot() const;
  void kv_restore(const uint8_t* data, size_t size, int64_t n);

  // Evaluates ids at n_past(), then samples and decodes until max_tokens, an
  // EOS token, a full context or on_token returning false.
  GenerateResult generate(const int32_t* ids, int64_t n, const GenerateOptions& o,
                          const std::function<bool(int32_t)>& on_token);

  // Pages the layer weights through `pager` (window W of the file's layers):
  // layer_bases[l] is where layer l's byte range starts in the memory the
  // weights were bound against (the model file's mapping). The engine then
  // reads layer l from the pager's slot between acquire(l) and release(l).
  // With `output`, the pager's layers after the last model layer are the
  // lm_head chunks it describes, and token rows are read with read_bytes().
  void attach_pager(std::shared_ptr<Pager> pager, std::vector<const uint8_t*> layer_bases,
                    std::optional<PagedOutput> output = std::nullopt);
  Pager* pager() const { return pager_.get(); }  // null when not paging

  // How a model file's weights are held (from_file.h), for reports: "read"
  // (into huge-page memory), "mmap" or "paged"; "" for caller-owned tensors.
  // huge_page_bytes() is how many of their bytes the kernel backs with huge
  // pages now.
  void set_weight_memory(std::string kind, std::function<uint64_t()> huge_bytes) {
    weight_memory_ = std::move(kind);
    huge_bytes_ = std::move(huge_bytes);
  }
  const std::string& weight_memory() const { return weight_memory_; }
  uint64_t huge_page_bytes() const { return huge_bytes_ ? huge_bytes_() : 0; }

  const Profile& profile() const { return prof_; }
  void set_profiling(bool on) { profiling_ = on; }
  void reset_profile() { prof_ = Profile{}; }

  // Forces the prefill kernel family ("lut", "int8") or lets each call pick ("auto").
  void set_matmul_path(const std::string& name) { path_ = matmul_path_from_name(name); }
  std::string matmul_path() const { return matmul_path_name(path_); }

 private:
  // One pass over T <= prefill_chunk tokens at positions pos.. ; the logits
  // of rows [first_logit, T) go to out (row stride vocab).
  void forward(const int32_t* ids, int64_t T, int64_t pos, int64_t first_logit, float* out);
  // Token id's embedding row (dim floats); in a shard with split embeddings,
  // its own columns and zeros elsewhere (forward() sums the rows across shards).
  void embed(int32_t id, float* row);
  void embed_stored(int32_t id, float* out);  // the w_.embd_cols columns the weights hold
  // Logits of m rows of xb (row stride dim) into out (row stride vocab).
  void lm_head(const float* xb, int64_t m, float* out);

  Config c_;
  ShardSpec shard_;
  EngineOptions opt_;
  CpuIsa isa_;
  MatmulPath path_ = MatmulPath::kAuto;
  Weights w_;
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<void> keepalive_;
  std::shared_ptr<Pager> pager_;             // null: every layer is resident
  std::string weight_memory_;
  std::function<uint64_t()> huge_bytes_;
  std::vector<const uint8_t*> layer_base_;  // (n_layers) start of layer l's bytes as bound
  std::optional<PagedOutput> out_paged_;     // set: embeddings and lm_head are paged
  std::vector<uint8_t> embd_tile_;           // one row tile of token_embd, read for a token
  ThreadPool pool_;
  KvCache kv_;
  int64_t n_past_ = 0;
  bool profiling_ = false;
  Profile prof_;

  // State: activations for a chunk of up to C = prefill_chunk tokens.
  int64_t n_q_ = 0, n_kv_ = 0, n_ffn_ = 0;  // local q heads, kv heads, FFN columns
  std::vector<float> x_;        // (C, dim) residual stream
  std::vector<float> xb_;       // (C, dim) normed input / partial sums
  std::vector<float> q_;        // (C, n_q * head_dim)
  std::vector<float> k_;        // (C, n_kv * head_dim)
  std::vector<float> v_;        // (C, n_kv * head_dim)
  std::vector<float> att_out_;  // (C, n_q * head_dim)
  std::vector<float> hb_;       // (C, n_ffn) gate, then SwiGLU
  std::vector<float> hb2_;      // (C, n_ffn) up
  std::vector<float> inv_freq_; // (head_dim / 2) RoPE frequencies
  std::vector<float> inv_freq_long_;  // (head_dim / 2) past the original context (LongRoPE), or empty
  bool rope_long_ = false;            // this eval call reaches past the original context
  std::vector<uint8_t> rope_long_at_; // LongRoPE: per cached position 0 short, 1 long, 2 unknown
  std::vector<float> cos_sin_;  // (C, head_dim / 2, 2)
  std::vector<float> inv_freq_local_;  // (head_dim / 2) of sliding layers, when they differ
  std::vector<float> cos_sin_local_;   // (C, head_dim / 2, 2)
  std::vector<float> logits_;   // (vocab) for generate
  std::vector<float> embd_row_; // (embd_cols) one stored embedding row
};

}  // namespace edgelut
