#include "kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "../kernels/fp16.h"

namespace edgelut {

KvType kv_type_from_name(const std::string& name) {
  if (name == "f32") return KvType::kF32;
  if (name == "f16") return KvType::kF16;
  if (name == "q8") return KvType::kQ8;
  throw std::invalid_argument("kv_type must be 'f32', 'f16' or 'q8', got '" + name + "'");
}

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::kF32: return "f32";
    case KvType::kF16: return "f16";
    case KvType::kQ8: return "q8";
  }
  return "?";
}

void quantize_q8_row(const float* x, int64_t n, int64_t block, int8_t* q, float* scales) {
  for (int64_t b = 0; b * block < n; ++b) {
    const float* xb = x + b * block;
    float amax = 0.0f;
    for (int64_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float inv = d > 0.0f ? 1.0f / d : 0.0f;
    scales[b] = d;
    for (int64_t i = 0; i < block; ++i) q[b * block + i] = static_cast<int8_t>(std::lrintf(xb[i] * inv));
  }
}

KvCache::KvCache(int64_t n_layers, int64_t n_ctx, int64_t n_kv_heads, int64_t head_dim, KvType type,
                 const std::vector<bool>& sliding, int64_t window, int64_t chunk)
    : n_ctx_(n_ctx),
      row_(static_cast<size_t>(n_kv_heads * head_dim)),
      type_(type),
      q8_block_(head_dim % 32 == 0 ? 32 : head_dim) {
  if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
  if (!sliding.empty() && static_cast<int64_t>(sliding.size()) != n_layers)
    throw std::invalid_argument("kv cache: sliding has " + std::to_string(sliding.size()) + " entries for " +
                                std::to_string(n_layers) + " layers");
  const int64_t ring = window > 0 ? window + std::max<int64_t>(chunk, 1) - 1 : 0;
  // A ring (with its mirror) only where it is smaller than the full cache.
  const bool rings = ring > 0 && ring + window - 1 < n_ctx;
  ring_layer_.assign(static_cast<size_t>(n_layers), false);
  int64_t rows = 0;
  for (int64_t l = 0; l < n_layers; ++l) {
    layer_row0_.push_back(rows);
    ring_layer_[l] = rings && sliding[l];
    rows += ring_layer_[l] ? ring + window - 1 : n_ctx;
  }
  if (rings && std::find(sliding.begin(), sliding.end(), true) != sliding.end()) {
    ring_ = ring;
    window_ = window;
    ring_pos_.assign(static_cast<size_t>(ring), -1);
  }
  const size_t elems = static_cast<size_t>(rows) * row_;
  k_.assign(elems * elem_bytes(), 0);
  v_.assign(elems * elem_bytes(), 0);
  if (type_ == KvType::kQ8) {
    ks_.assign(elems / q8_block_, 0.0f);
    vs_.assign(elems / q8_block_, 0.0f);
  }
}

bool KvCache::holds(int64_t begin, int64_t end) const {
  if (ring_ == 0) return true;
  for (int64_t p = std::max<int64_t>(begin, 0); p < end; ++p)
    if (ring_pos_[p % ring_] != p) return false;
  return true;
}

template <class Self, class Part>
void KvCache::for_each_part(Self& kv, int64_t n, Part&& part) {
  const size_t eb = kv.elem_bytes();
  for (size_t l = 0; l < kv.layer_row0_.size(); ++l) {
    const size_t first = static_cast<size_t>(kv.layer_row0_[l]) * kv.row_;
    const size_t count = static_cast<size_t>(kv.held_rows(static_cast<int64_t>(l), n)) * kv.row_;
    part(kv.k_.data() + first * eb, count * eb);
    part(kv.v_.data() + first * eb, count * eb);
    if (kv.type_ == KvType::kQ8) {
      part(kv.ks_.data() + first / kv.q8_block_, count / kv.q8_block_ * sizeof(float));
      part(kv.vs_.data() + first / kv.q8_block_, count / kv.q8_block_ * sizeof(float));
    }
  }
  part(kv.ring_pos_.data(), kv.ring_pos_.size() * sizeof(int64_t));
}

size_t KvCache::snapshot_bytes(int64_t n) const {
  size_t total = 0;
  for_each_part(*this, n, [&](const void*, size_t bytes) { total += bytes; });
  return total;
}

std::vector<uint8_t> KvCache::snapshot(int64_t n) const {
  if (n < 0 || n > n_ctx_)
    throw std::invalid_argument("kv snapshot: " + std::to_string(n) + " positions is outside the context");
  std::vector<uint8_t> out(snapshot_bytes(n));
  uint8_t* o = out.data();
  for_each_part(*this, n, [&](const void* src, size_t bytes) {
    std::memcpy(o, src, bytes);
    o += bytes;
  });
  return out;
}

void KvCache::restore(const uint8_t* data, size_t size, int64_t n) {
  if (!is_snapshot(size, n))
    throw std::invalid_argument("kv restore: " + std::to_string(size) + " bytes are not a snapshot of " +
                                std::to_string(n) + " positions of this cache");
  const uint8_t* in = data;
  for_each_part(*this, n, [&](void* dst, size_t bytes) {
    std::memcpy(dst, in, bytes);
    in += bytes;
  });
}

KvHeadRows KvCache::head(int64_t layer, int64_t kv_head, int64_t head_dim, int64_t first) const {
  const size_t off = offset(layer, first) + static_cast<size_t>(kv_head * head_dim);
  KvHeadRows r;
  r.k = k_.data() + off * elem_bytes();
  r.v = v_.data() + off * elem_bytes();
  r.stride = static_cast<int64_t>(row_);
  if (type_ == KvType::kQ8) {
    r.k_scales = ks_.data() + off / q8_block_;
    r.v_scales = vs_.data() + off / q8_block_;
    r.block = q8_block_;
  }
  return r;
}

void KvCache::store(int64_t layer, int64_t pos, const float* k, const float* v) {
  store_row(offset(layer, pos), k, v);
  if (!ring_layer_[layer]) return;
  const int64_t r = pos % ring_;
  ring_pos_[r] = pos;
  // The mirror after the end keeps any window-long run of rows contiguous.
  if (r < window_ - 1) store_row((static_cast<size_t>(layer_row0_[layer]) + ring_ + r) * row_, k, v);
}

void KvCache::store_row(size_t off, const float* k, const float* v) {
  if (type_ == KvType::kF32) {
    std::memcpy(k_.data() + off * 4, k, row_ * 4);
    std::memcpy(v_.data() + off * 4, v, row_ * 4);
    return;
  }
  if (type_ == KvType::kQ8) {
    const int64_t n = static_cast<int64_t>(row_);
    quantize_q8_row(k, n, q8_block_, reinterpret_cast<int8_t*>(k_.data()) + off, ks_.data() + off / q8_block_);
    quantize_q8_row(v, n, q8_block_, reinterpret_cast<int8_t*>(v_.data()) + off, vs_.data() + off / q8_block_);
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
