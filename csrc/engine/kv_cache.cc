#include "kv_cache.h"

#include <cstring>
#include <stdexcept>

#include "../kernels/fp16.h"

namespace edgelut {

KvType kv_type_from_name(const std::string& name) {
  if (name == "f32") return KvType::kF32;
  if (name == "f16") return KvType::kF16;
  throw std::invalid_argument("kv_type must be 'f32' or 'f16', got '" + name + "'");
}

const char* kv_type_name(KvType t) { return t == KvType::kF32 ? "f32" : "f16"; }

KvCache::KvCache(int64_t n_layers, int64_t n_ctx, int64_t n_kv_heads, int64_t head_dim, KvType type)
    : n_ctx_(n_ctx), row_(static_cast<size_t>(n_kv_heads * head_dim)), type_(type) {
  if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
  const size_t bytes = static_cast<size_t>(n_layers) * n_ctx * row_ * elem_bytes();
  k_.assign(bytes, 0);
  v_.assign(bytes, 0);
}

void KvCache::store(int64_t layer, int64_t pos, const float* k, const float* v) {
  const size_t off = offset(layer, pos);
  if (type_ == KvType::kF32) {
    std::memcpy(k_.data() + off * 4, k, row_ * 4);
    std::memcpy(v_.data() + off * 4, v, row_ * 4);
    return;
  }
  uint16_t* kd = reinterpret_cast<uint16_t*>(k_.data()) + off;
  uint16_t* vd = reinterpret_cast<uint16_t*>(v_.data()) + off;
  for (size_t i = 0; i < row_; ++i) {
    kd[i] = fp32_to_fp16(k[i]);
    vd[i] = fp32_to_fp16(v[i]);
  }
}

}  // namespace edgelut
