// The small float ops of the forward pass (everything that is not a LUT
// matmul). Raw pointers, no checks: the engine validates shapes once at
// construction and positions per call.
#pragma once
#include <cstdint>

#include "../kernels/cpu_isa.h"

namespace edgelut {

// out = x / rms(x) * w, over n elements.
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);

// Rotary position embedding for one token, applied in place to n_heads
// vectors of head_dim. cos_sin holds head_dim/2 (cos, sin) pairs for this
// position. neox: pairs (i, i + head_dim/2); adjacent: pairs (2i, 2i + 1).
void rope_inplace(float* x, int64_t n_heads, int64_t head_dim, const float* cos_sin, bool neox);

// (cos, sin) of pos * inv_freq[i] for i < head_dim/2, with linear scaling
// already folded into pos (pos / factor).
void rope_angles(float* cos_sin, const float* inv_freq, int64_t half, double pos);

// In-place softmax over n elements.
void softmax_inplace(float* x, int64_t n);

// gate = silu(gate) * up, over n elements (SwiGLU).
void swiglu_inplace(float* gate, const float* up, int64_t n);

// KV cache element access: fp32 or fp16 (portable conversion).
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16(const float* a, const uint16_t* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);

// q8 KV cache rows: int8 codes b with one scale per `block` values
// (n % block == 0). dot = sum a[i] * b[i] * scales[i / block];
// axpy: y[i] += a * x[i] * scales[i / block]. The *_ref versions are the
// scalar oracle and the path on every ISA without a SIMD version.
float dot_q8_ref(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block);
void axpy_q8_ref(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block);
#if defined(__x86_64__)
// AVX2 + FMA (attn_avx2.cc); the q8 ones need block % 8 == 0.
float dot_q8_avx2(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block);
void axpy_q8_avx2(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block);
void attn_head_f16_avx2(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n,
                        int64_t head_dim, float scale, float* att, float* out);
#endif

struct KvQ8Kernels {
  float (*dot)(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block);
  void (*axpy)(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block);
};
// The one dispatch point of the q8 attention kernels: AVX2 on x86 CPUs with
// AVX2 or AVX-512 (head_dim blocks of 32 fill 256-bit lanes well), the
// scalar reference elsewhere (NEON included) or when block % 8 != 0.
const KvQ8Kernels& kv_q8_kernels(CpuIsa isa, int64_t block);

// Causal attention of one query head over n cached positions of the f16
// cache: k and v point at its kv head's part of position 0, rows `stride`
// elements apart. att (n floats) is scratch; out gets head_dim floats.
// scores = scale * q.k, softmax, out = sum of softmax * v.
void attn_head_f16_ref(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n,
                       int64_t head_dim, float scale, float* att, float* out);
using AttnHeadF16 = void (*)(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n,
                             int64_t head_dim, float scale, float* att, float* out);
// The one dispatch point for the (default) f16 cache: AVX2 + F16C on x86 CPUs
// with AVX2 or AVX-512 (query and output held in registers, a vectorised exp
// in the softmax), the reference elsewhere. The SIMD version sums in another
// order and its exp differs by < 2e-7 relative, so the two agree to rounding.
AttnHeadF16 attn_head_f16(CpuIsa isa);

}  // namespace edgelut
