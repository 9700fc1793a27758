// AVX2 + FMA (+ F16C) attention kernels over KV cache rows (contract and
// scalar oracles in ops.h / ops.cc). q8: int8 codes are widened to fp32 eight
// at a time, one scale per block. f16: vcvtph2ps converts eight halves per
// instruction, where the portable path looks each one up in a table.
#include <immintrin.h>

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

float dot_f16_avx2(const float* a, const uint16_t* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_f16(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8_f16(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_f16(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * _cvtsh_ss(b[i]);
  return s;
}

void axpy_f16_avx2(float a, const uint16_t* x, float* y, int64_t n) {
  const __m256 f = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(f, load8_f16(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * _cvtsh_ss(x[i]);
}

}  // namespace edgelut
