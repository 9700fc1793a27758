// The KV cache: keys and values of every past position, per layer, for the
// kv heads this shard holds. Stored as fp32, fp16 (half the memory; the
// conversion is the portable one in kernels/fp16.h) or q8: int8 codes with one
// fp32 scale per block of q8_block() values (symmetric, scale = amax / 127),
// quantised once when the row is stored. With head_dim 64 that is 72 bytes per
// head and position against 128 for fp16 (0.5625x).
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
  KvCache(int64_t n_layers, int64_t n_ctx, int64_t n_kv_heads, int64_t head_dim, KvType type);

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

  // Raw rows (n_kv_heads * head_dim elements) at (layer, pos): float*,
  // uint16_t* or int8_t* depending on type().
  const void* key(int64_t layer, int64_t pos) const { return k_.data() + offset(layer, pos) * elem_bytes(); }
  const void* value(int64_t layer, int64_t pos) const { return v_.data() + offset(layer, pos) * elem_bytes(); }
  // q8 only: the row's scales, one per q8_block() values (element i of the
  // row has scale [i / q8_block()]).
  const float* key_scales(int64_t layer, int64_t pos) const { return ks_.data() + offset(layer, pos) / q8_block_; }
  const float* value_scales(int64_t layer, int64_t pos) const { return vs_.data() + offset(layer, pos) / q8_block_; }
  // The rows of kv head `kv_head` (of head_dim elements) in `layer`, for the attention kernels.
  KvHeadRows head(int64_t layer, int64_t kv_head, int64_t head_dim) const;

 private:
  size_t offset(int64_t layer, int64_t pos) const {
    return (static_cast<size_t>(layer) * n_ctx_ + pos) * row_;
  }
  int64_t n_ctx_;
  size_t row_;  // n_kv_heads * head_dim
  KvType type_;
  int64_t q8_block_;
  // (layer, n_ctx, n_kv_heads, head_dim) elements of elem_bytes() each.
  std::vector<uint8_t> k_, v_;
  // q8 scales: (layer, n_ctx, n_kv_heads * head_dim / q8_block); empty otherwise.
  std::vector<float> ks_, vs_;
};

}  // namespace edgelut
