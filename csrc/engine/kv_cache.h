// The KV cache: keys and values of every past position, per layer, for the
// kv heads this shard holds. Stored as fp32, fp16 (half the memory; the
// conversion is the portable one in kernels/fp16.h) or q8: int8 codes with one
// fp32 scale per block of q8_block() values (symmetric, scale = amax / 127),
// quantised once when the row is stored. With head_dim 64 that is 72 bytes per
// head and position against 128 for fp16 (0.5625x).
//
// Sliding-window layers (Gemma 3) can keep a ring instead of every position:
// R = window + chunk - 1 rows (a prefill chunk of `chunk` tokens writes all
// of its rows before any of them attends, and its first token still needs
// the window - 1 positions before the chunk), position p in row p % R. The
// first window - 1 rows are written a second time after the end, so the
// window of any position is one contiguous run of rows and the attention
// kernels read it as they read a full cache.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace edgelut {

enum class KvType { kF32 = 0, kF16 = 1, kQ8 = 2 };

// Throws std::invalid_argument for anything but "f32" / "f16" / "q8".
KvType kv_type_from_name(const std::string& name);
const char* kv_type_name(KvType t);

// One kv head's part of a layer's cache, from position 0: position s's row
// starts `stride` elements after position s-1's. Elements are float,
// uint16_t (fp16) or int8_t by the cache type; for q8, element i of a row has
// the scale k_scales[i / block] (scale rows stride / block apart).
struct KvHeadRows {
  const void* k = nullptr;
  const void* v = nullptr;
  const float* k_scales = nullptr;  // q8 only
  const float* v_scales = nullptr;  // q8 only
  int64_t stride = 0;
  int64_t block = 0;  // q8 only
};

// Symmetric int8 codes of x (n values, n a multiple of block) with one scale
// per block: q = round(x / d), d = amax(block) / 127 (0 for an all-zero block).
void quantize_q8_row(const float* x, int64_t n, int64_t block, int8_t* q, float* scales);

class KvCache {
 public:
  // sliding[l] marks a sliding-window layer; with window > 0 such a layer keeps a
  // ring of window + chunk - 1 positions (when that and the mirror take fewer rows than n_ctx).
  KvCache(int64_t n_layers, int64_t n_ctx, int64_t n_kv_heads, int64_t head_dim, KvType type,
          const std::vector<bool>& sliding = {}, int64_t window = 0, int64_t chunk = 1);

  int64_t n_ctx() const { return n_ctx_; }
  KvType type() const { return type_; }
  // Bytes of keys and values (and the q8 scales) for every layer and position.
  size_t nbytes() const { return (k_.size() + ks_.size() * sizeof(float)) * 2; }
  size_t elem_bytes() const { return type_ == KvType::kF32 ? 4 : type_ == KvType::kF16 ? 2 : 1; }
  // Values per q8 scale: 32 when head_dim allows (blocks never straddle two
  // heads), else one scale per head.
  int64_t q8_block() const { return q8_block_; }

  // Writes k and v (n_kv_heads * head_dim floats each) at (layer, pos).
  void store(int64_t layer, int64_t pos, const float* k, const float* v);
  // Positions a ring layer holds (0: no layer is a ring).
  int64_t ring_size() const { return ring_; }
  // True when every position in [begin, end) is still in the cache (a ring
  // forgets a position R positions later).
  bool holds(int64_t begin, int64_t end) const;

  // A copy of what positions [0, n) left in the cache: every layer's first n
  // rows (a ring layer's whole ring and mirror) with their q8 scales, and the
  // ring's position map. restore() puts such a copy back exactly, so a prompt
  // cache can keep several conversations and continue any of them.
  std::vector<uint8_t> snapshot(int64_t n) const;
  // Whether size bytes can be a snapshot of n positions (n in [0, n_ctx], the size of snapshot(n)).
  bool is_snapshot(size_t size, int64_t n) const { return n >= 0 && n <= n_ctx_ && size == snapshot_bytes(n); }
  // Throws std::invalid_argument when data is not a snapshot of n positions of this cache.
  void restore(const uint8_t* data, size_t size, int64_t n);

  // Raw rows (n_kv_heads * head_dim elements) at (layer, pos): float*,
  // uint16_t* or int8_t* depending on type().
  const void* key(int64_t layer, int64_t pos) const { return k_.data() + offset(layer, pos) * elem_bytes(); }
  const void* value(int64_t layer, int64_t pos) const { return v_.data() + offset(layer, pos) * elem_bytes(); }
  // q8 only: the row's scales, one per q8_block() values (element i of the
  // row has scale [i / q8_block()]).
  const float* key_scales(int64_t layer, int64_t pos) const { return ks_.data() + offset(layer, pos) / q8_block_; }
  const float* value_scales(int64_t layer, int64_t pos) const { return vs_.data() + offset(layer, pos) / q8_block_; }
  // The rows of kv head `kv_head` (of head_dim elements) in `layer` from
  // position `first` on (contiguous up to the window in a ring), for the attention kernels.
  KvHeadRows head(int64_t layer, int64_t kv_head, int64_t head_dim, int64_t first = 0) const;

 private:
  int64_t row_of(int64_t layer, int64_t pos) const { return ring_layer_[layer] ? pos % ring_ : pos; }
  size_t offset(int64_t layer, int64_t pos) const {
    return (static_cast<size_t>(layer_row0_[layer]) + static_cast<size_t>(row_of(layer, pos))) * row_;
  }
  void store_row(size_t off, const float* k, const float* v);
  // Rows layer l holds for positions [0, n): n, or a ring layer's every row.
  int64_t held_rows(int64_t layer, int64_t n) const { return ring_layer_[layer] ? ring_ + window_ - 1 : n; }
  // Calls part(pointer, bytes) for each piece of a snapshot of n positions, in
  // snapshot order (Self is KvCache or const KvCache): one walk for the size,
  // the copy out and the copy back.
  template <class Self, class Part>
  static void for_each_part(Self& kv, int64_t n, Part&& part);
  size_t snapshot_bytes(int64_t n) const;
  int64_t n_ctx_;
  size_t row_;  // n_kv_heads * head_dim
  KvType type_;
  int64_t q8_block_;
  int64_t ring_ = 0, window_ = 0;       // ring positions R and the window (0: no rings)
  std::vector<bool> ring_layer_;        // (n_layers)
  std::vector<int64_t> layer_row0_;     // (n_layers) first row of each layer
  std::vector<int64_t> ring_pos_;       // (R) the position each ring row holds, -1: none
  // (rows of all layers, n_kv_heads, head_dim) elements of elem_bytes() each.
  std::vector<uint8_t> k_, v_;
  // q8 scales: (layer, n_ctx, n_kv_heads * head_dim / q8_block); empty otherwise.
  std::vector<float> ks_, vs_;
};

}  // namespace edgelut
