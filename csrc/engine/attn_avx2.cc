// AVX2 + FMA (+ F16C) attention kernels over KV cache rows (contract and
// scalar oracles in ops.h / ops.cc). q8: int8 codes are widened to fp32 eight
// at a time, one scale per block. f16: vcvtph2ps converts eight halves per
// instruction, where the portable path looks each one up in a table.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "ops.h"

namespace edgelut {

namespace {
inline __m256 load8_q8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
}  // namespace

float dot_q8_avx2(const float* a, const int8_t* b, const float* scales, int64_t n, int64_t block) {
  __m256 total = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    // Two accumulators: consecutive FMAs into one register would wait on each other.
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 16 <= b0 + block; i += 16) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_q8(b + i), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8_q8(b + i + 8), acc1);
    }
    for (; i < b0 + block; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_q8(b + i), acc0);
    total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps(scales[b0 / block]), total);
  }
  return hsum(total);
}

void axpy_q8_avx2(float a, const int8_t* x, const float* scales, float* y, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const __m256 f = _mm256_set1_ps(a * scales[b0 / block]);
    for (int64_t i = b0; i < b0 + block; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(f, load8_q8(x + i), _mm256_loadu_ps(y + i)));
  }
}

namespace {
// exp(x) for x <= 0 (softmax after subtracting the max): x = n ln2 + r with
// |r| <= ln2/2, e^r by its Taylor series to r^6 (relative error < 2e-7 on that
// range), 2^n put into the exponent bits. Inputs below -87 are clamped, which
// keeps 2^n a normal float; their weight after normalisation is < 1e-37.
inline __m256 exp_nonpos(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split in two so that n * ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// In place: att[0..n) = softmax(att).
void softmax_avx2(float* att, int64_t n) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(att + i));
  float mx = hmax(vm);
  for (int64_t j = i; j < n; ++j) mx = std::max(mx, att[j]);
  const __m256 m8 = _mm256_set1_ps(mx);
  __m256 vs = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(att + i), m8));
    _mm256_storeu_ps(att + i, e);
    vs = _mm256_add_ps(vs, e);
  }
  float sum = hsum(vs);
  for (; i < n; ++i) {
    att[i] = std::exp(att[i] - mx);
    sum += att[i];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(att + i, _mm256_mul_ps(_mm256_loadu_ps(att + i), inv));
  for (; i < n; ++i) att[i] *= 1.0f / sum;
}

// One head with head_dim = 8 * NV: the query and the output stay in
// registers across all positions, so each K and V row is read once and
// nothing else touches memory.
template <int NV>
void attn_head_f16_fixed(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n,
                         float scale, float* att, float* out) {
  __m256 qr[NV];
  for (int j = 0; j < NV; ++j) qr[j] = _mm256_loadu_ps(q + 8 * j);
  for (int64_t s = 0; s < n; ++s) {
    const uint16_t* kr = k + s * stride;
    __m256 a0 = _mm256_mul_ps(qr[0], load8_f16(kr));
    __m256 a1 = _mm256_mul_ps(qr[1], load8_f16(kr + 8));
    for (int j = 2; j + 1 < NV; j += 2) {
      a0 = _mm256_fmadd_ps(qr[j], load8_f16(kr + 8 * j), a0);
      a1 = _mm256_fmadd_ps(qr[j + 1], load8_f16(kr + 8 * j + 8), a1);
    }
    att[s] = scale * hsum(_mm256_add_ps(a0, a1));
  }
  softmax_avx2(att, n);
  __m256 acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t s = 0; s < n; ++s) {
    const uint16_t* vr = v + s * stride;
    const __m256 w = _mm256_set1_ps(att[s]);
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_fmadd_ps(w, load8_f16(vr + 8 * j), acc[j]);
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out + 8 * j, acc[j]);
}
}  // namespace

void attn_head_f16_avx2(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n,
                        int64_t head_dim, float scale, float* att, float* out) {
  switch (head_dim) {
    case 64:
      return attn_head_f16_fixed<8>(q, k, v, stride, n, scale, att, out);
    case 128:
      return attn_head_f16_fixed<16>(q, k, v, stride, n, scale, att, out);
    case 32:
      return attn_head_f16_fixed<4>(q, k, v, stride, n, scale, att, out);
    default:
      return attn_head_f16_ref(q, k, v, stride, n, head_dim, scale, att, out);
  }
}

}  // namespace edgelut
