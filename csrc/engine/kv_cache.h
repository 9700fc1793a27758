// The KV cache: keys and values of every past position, per layer, for the
// kv heads this shard holds. Stored as fp32 or fp16 (half the memory; the
// conversion is the portable one in kernels/fp16.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace edgelut {

enum class KvType { kF32 = 0, kF16 = 1 };

// Throws std::invalid_argument for anything but "f32" / "f16".
KvType kv_type_from_name(const std::string& name);
const char* kv_type_name(KvType t);

class KvCache {
 public:
  KvCache(int64_t n_layers, int64_t n_ctx, int64_t n_kv_heads, int64_t head_dim, KvType type);

  int64_t n_ctx() const { return n_ctx_; }
  KvType type() const { return type_; }
  size_t nbytes() const { return k_.size() * elem_bytes() * 2; }
  size_t elem_bytes() const { return type_ == KvType::kF32 ? 4 : 2; }

  // Writes k and v (n_kv_heads * head_dim floats each) at (layer, pos).
  void store(int64_t layer, int64_t pos, const float* k, const float* v);

  // Raw rows (n_kv_heads * head_dim elements) at (layer, pos): float* or
  // uint16_t* depending on type().
  const void* key(int64_t layer, int64_t pos) const { return k_.data() + offset(layer, pos) * elem_bytes(); }
  const void* value(int64_t layer, int64_t pos) const { return v_.data() + offset(layer, pos) * elem_bytes(); }

 private:
  size_t offset(int64_t layer, int64_t pos) const {
    return (static_cast<size_t>(layer) * n_ctx_ + pos) * row_;
  }
  int64_t n_ctx_;
  size_t row_;  // n_kv_heads * head_dim
  KvType type_;
  // (layer, n_ctx, n_kv_heads, head_dim) elements of elem_bytes() each.
  std::vector<uint8_t> k_, v_;
};

}  // namespace edgelut
