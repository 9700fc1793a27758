// The small float ops of the forward pass (everything that is not a LUT
// matmul). Raw pointers, no checks: the engine validates shapes once at
// construction and positions per call.
#pragma once
#include <cstdint>

#include "../kernels/cpu_isa.h"
#include "kv_cache.h"

namespace edgelut {

// out = x / rms(x) * w, over n elements.
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);

// Rotary position embedding for one token, applied in place to the first
// rope_dim values of n_heads vectors of head_dim (the rest pass unchanged:
// partial RoPE, Phi-4-mini). cos_sin holds rope_dim/2 (cos, sin) pairs for
// this position. neox: pairs (i, i + rope_dim/2); adjacent: pairs (2i, 2i + 1).
void rope_inplace(float* x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float* cos_sin, bool neox);

// (cos, sin) of pos * inv_freq[i] for i < head_dim/2, with linear scaling
// already folded into pos (pos / factor).
void rope_angles(float* cos_sin, const float* inv_freq, int64_t half, double pos);

// In-place softmax over n elements.
void softmax_inplace(float* x, int64_t n);

// The gated FFN activation, in place over n elements: SwiGLU gate =
// silu(gate) * up, or GeGLU (Gemma) gate = gelu_tanh(gate) * up with
// gelu_tanh(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).
using GatedAct = void (*)(float* gate, const float* up, int64_t n);
// The scalar oracles (libm exp / tanh), and the path on every ISA without AVX2.
void swiglu_ref(float* gate, const float* up, int64_t n);
void geglu_ref(float* gate, const float* up, int64_t n);
#if defined(__x86_64__)
// AVX2 + FMA (act_avx2.cc): exp by a polynomial (relative error < 2e-7),
// tanh from it; within 1e-6 relative of the oracles (tested).
void swiglu_avx2(float* gate, const float* up, int64_t n);
void geglu_avx2(float* gate, const float* up, int64_t n);
#endif
// The one dispatch point of the activation for this CPU.
GatedAct gated_act(CpuIsa isa, bool gelu);
// gate = max(gate, 0)^2 * up (BitNet b1.58's squared ReLU).
void relu2_glu_inplace(float* gate, const float* up, int64_t n);
// x = round(x * 127 / max|x|) clipped to [-128, 127], times max|x| / 127: BitNet's per-token
// int8 activation quantisation, applied in place to one token's vector.
void act_int8_inplace(float* x, int64_t n);

// KV cache element access: fp32 or fp16 (portable conversion).
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16(const float* a, const uint16_t* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);

// q8 KV cache rows: int8 codes b with one scale per `block` values
// (n % block == 0). dot = sum a[i] * b[i] * scales[i / block];
// axpy: y[i] += a * x[i] * scales[i / block]. Scalar; the SIMD versions live
// inside the fused head kernels below.
float dot_q8_ref(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block);
void axpy_q8_ref(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block);

// Causal attention of one query head q over n cached positions of one kv
// head: scores = scale * q.k, softmax, out = sum of softmax * v. att (n
// floats) is scratch; out gets head_dim floats. One kernel per cache type,
// so the loop over positions runs inside it (no call per position).
using AttnHead = void (*)(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale,
                          float* att, float* out);

// The scalar oracles, and the path on every ISA without a SIMD version.
void attn_head_f32_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out);
void attn_head_f16_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out);
void attn_head_q8_ref(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                      float* out);
#if defined(__x86_64__)
// AVX2 + FMA + F16C (attn_avx2.cc): query and output held in registers for
// head_dim 32/64/128, and for multiples of 128 (Gemma 3's 256) chunk by chunk;
// a vectorised exp in the softmax; other head sizes (and q8 blocks that are
// not a multiple of 8) fall back to the reference. The sums run in another
// order and the exp differs by < 2e-7 relative, so SIMD and reference agree
// to rounding.
void attn_head_f16_avx2(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale,
                        float* att, float* out);
void attn_head_q8_avx2(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out);
#endif

// The one dispatch point of attention: the kernel for a cache type on this
// CPU (AVX2 on x86 CPUs with AVX2 or AVX-512, the reference elsewhere).
AttnHead attn_head(CpuIsa isa, KvType type);

}  // namespace edgelut
