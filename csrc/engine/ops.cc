#include "ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../kernels/fp16.h"

namespace edgelut {

namespace {
// fp16 -> fp32 for every bit pattern (256 KiB): a load instead of the
// branchy portable conversion in the attention loops over the fp16 KV cache.
const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = fp16_to_fp32(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}
}  // namespace

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  double ss = 0.0;  // double: n is up to ~16k and the mean feeds every output
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void rope_angles(float* cos_sin, const float* inv_freq, int64_t half, double pos) {
  for (int64_t i = 0; i < half; ++i) {
    const double a = pos * inv_freq[i];
    cos_sin[2 * i] = static_cast<float>(std::cos(a));
    cos_sin[2 * i + 1] = static_cast<float>(std::sin(a));
  }
}

void rope_inplace(float* x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float* cos_sin, bool neox) {
  const int64_t half = rope_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
      // neox rotates (i, i + half); adjacent rotates (2i, 2i + 1).
      const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void softmax_inplace(float* x, int64_t n) {
  const float mx = *std::max_element(x, x + n);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu_ref(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void geglu_ref(float* gate, const float* up, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
  }
}

void relu2_glu_inplace(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float r = gate[i] > 0.0f ? gate[i] : 0.0f;
    gate[i] = r * r * up[i];
  }
}

void act_int8_inplace(float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  // The same float32 steps as the numpy reference: scale = 127 / max(|x|, 1e-5), q / scale.
  const float scale = 127.0f / std::max(amax, 1e-5f);
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::nearbyint(x[i] * scale);
    x[i] = std::min(127.0f, std::max(-128.0f, q)) / scale;
  }
}

// Eight independent partial sums: a single running sum is a chain of
// dependent adds (latency-bound); eight lanes let the compiler vectorise.
template <typename Load>
float dot8(const float* a, int64_t n, Load load) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * load(i + j);
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * load(i);
  return s;
}

float dot_f32(const float* a, const float* b, int64_t n) {
  return dot8(a, n, [b](int64_t i) { return b[i]; });
}

float dot_f16(const float* a, const uint16_t* b, int64_t n) {
  const float* tab = f16_table();
  return dot8(a, n, [b, tab](int64_t i) { return tab[b[i]]; });
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  const float* tab = f16_table();
  for (int64_t i = 0; i < n; ++i) y[i] += a * tab[x[i]];
}

float dot_q8_ref(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block) {
  float s = 0.0f;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int8_t* bb = b + b0;
    const float sum = dot8(a + b0, block, [bb](int64_t i) { return static_cast<float>(bb[i]); });
    s += sum * scales[b0 / block];
  }
  return s;
}

void axpy_q8_ref(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const float f = a * scales[b0 / block];
    for (int64_t i = b0; i < b0 + block; ++i) y[i] += f * static_cast<float>(x[i]);
  }
}

namespace {
// The scalar head kernel over cache elements of type T (f32 or f16 bits).
template <class T, float (*Dot)(const float*, const T*, int64_t), void (*Axpy)(float, const T*, float*, int64_t)>
void attn_head_plain_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                         float* out) {
  const T* k = static_cast<const T*>(kv.k);
  const T* v = static_cast<const T*>(kv.v);
  for (int64_t s = 0; s < n; ++s) att[s] = scale * Dot(q, k + s * kv.stride, head_dim);
  softmax_inplace(att, n);
  std::fill(out, out + head_dim, 0.0f);
  for (int64_t s = 0; s < n; ++s) Axpy(att[s], v + s * kv.stride, out, head_dim);
}
}  // namespace

void attn_head_f32_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out) {
  attn_head_plain_ref<float, dot_f32, axpy_f32>(q, kv, n, head_dim, scale, att, out);
}

void attn_head_f16_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out) {
  attn_head_plain_ref<uint16_t, dot_f16, axpy_f16>(q, kv, n, head_dim, scale, att, out);
}

void attn_head_q8_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                      float* out) {
  const auto* k = static_cast<const int8_t*>(kv.k);
  const auto* v = static_cast<const int8_t*>(kv.v);
  const int64_t sstride = kv.stride / kv.block;
  for (int64_t s = 0; s < n; ++s)
    att[s] = scale * dot_q8_ref(q, k + s * kv.stride, kv.k_scales + s * sstride, head_dim, kv.block);
  softmax_inplace(att, n);
  std::fill(out, out + head_dim, 0.0f);
  for (int64_t s = 0; s < n; ++s)
    axpy_q8_ref(att[s], v + s * kv.stride, kv.v_scales + s * sstride, out, head_dim, kv.block);
}

GatedAct gated_act(CpuIsa isa, bool gelu) {
#if defined(__x86_64__)
  if (isa == CpuIsa::kAvx2 || isa == CpuIsa::kAvx512) return gelu ? geglu_avx2 : swiglu_avx2;
#else
  (void)isa;
#endif
  return gelu ? geglu_ref : swiglu_ref;
}

AttnHead attn_head(CpuIsa isa, KvType type) {
#if defined(__x86_64__)
  if (isa == CpuIsa::kAvx2 || isa == CpuIsa::kAvx512) {
    if (type == KvType::kF16) return attn_head_f16_avx2;
    if (type == KvType::kQ8) return attn_head_q8_avx2;
  }
#else
  (void)isa;
#endif
  switch (type) {
    case KvType::kF16: return attn_head_f16_ref;
    case KvType::kQ8: return attn_head_q8_ref;
    case KvType::kF32: break;
  }
  return attn_head_f32_ref;
}

}  // namespace edgelut
