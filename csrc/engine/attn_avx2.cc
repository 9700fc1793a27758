// AVX2 + FMA (+ F16C) attention kernels over KV cache rows (contract and
// scalar oracles in ops.h / ops.cc). q8: int8 codes are widened to fp32 eight
// at a time, one scale per block. f16: vcvtph2ps converts eight halves per
// instruction, where the portable path looks each one up in a table.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "avx2_math.h"
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
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(att + i), m8));
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

// One head, walked in chunks of 8 * NV dimensions (head_dim = chunks * 8 *
// NV): within a chunk the query and the output stay in registers across all
// positions, so each K and V row is read once and nothing else touches
// memory. Heads wider than 16 vectors (Gemma 3's 256) would not fit the 16
// ymm registers, so they take several chunks: the scores add up chunk by
// chunk and the output is written chunk by chunk, still one read of every
// row. Load8 widens 8 cached elements to fp32. A scale covers BV vectors
// (q8: BV = block / 8; f16 has no scales and BV = NV). NV and BV are
// compile-time so the register arrays are never indexed at run time (which
// would put them on the stack).
template <int NV, int BV, class T, __m256 (*Load8)(const T*)>
void attn_head_chunked(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out) {
  static_assert(NV % BV == 0 && BV >= 2, "whole scale blocks of at least two vectors");
  const T* k = static_cast<const T*>(kv.k);
  const T* v = static_cast<const T*>(kv.v);
  const int64_t sstride = kv.k_scales ? kv.stride / kv.block : 0;
  const int64_t chunks = head_dim / (8 * NV);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = 8 * NV * c, soff = NV * c / BV;  // first value, first scale of the chunk
    __m256 qr[NV];
    for (int j = 0; j < NV; ++j) qr[j] = _mm256_loadu_ps(q + off + 8 * j);
    for (int64_t s = 0; s < n; ++s) {
      const T* kr = k + s * kv.stride + off;
      __m256 total = _mm256_setzero_ps();
      for (int j0 = 0; j0 < NV; j0 += BV) {
        // Two accumulators: consecutive FMAs into one register would wait on each other.
        __m256 a0 = _mm256_mul_ps(qr[j0], Load8(kr + 8 * j0));
        __m256 a1 = _mm256_mul_ps(qr[j0 + 1], Load8(kr + 8 * j0 + 8));
        for (int j = j0 + 2; j + 1 < j0 + BV; j += 2) {
          a0 = _mm256_fmadd_ps(qr[j], Load8(kr + 8 * j), a0);
          a1 = _mm256_fmadd_ps(qr[j + 1], Load8(kr + 8 * j + 8), a1);
        }
        const __m256 blk = _mm256_add_ps(a0, a1);
        total = kv.k_scales
                    ? _mm256_fmadd_ps(blk, _mm256_set1_ps(kv.k_scales[s * sstride + soff + j0 / BV]), total)
                    : blk;
      }
      // One chunk (every head up to 128): exactly scale * dot, as before chunks existed.
      att[s] = c == 0 ? hsum(total) : att[s] + hsum(total);
    }
  }
  for (int64_t s = 0; s < n; ++s) att[s] *= scale;
  softmax_avx2(att, n);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = 8 * NV * c, soff = NV * c / BV;
    __m256 acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t s = 0; s < n; ++s) {
      const T* vr = v + s * kv.stride + off;
      for (int j0 = 0; j0 < NV; j0 += BV) {
        const __m256 w =
            _mm256_set1_ps(kv.v_scales ? att[s] * kv.v_scales[s * sstride + soff + j0 / BV] : att[s]);
        for (int j = j0; j < j0 + BV; ++j) acc[j] = _mm256_fmadd_ps(w, Load8(vr + 8 * j), acc[j]);
      }
    }
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out + off + 8 * j, acc[j]);
  }
}

// head_dim 32/64/128 in one chunk, multiples of 128 (Gemma 3's 256) in several;
// one scale per head (f16: none) or, for q8, one per 32 values.
template <class T, __m256 (*Load8)(const T*)>
bool attn_head_dispatch(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                        float* out) {
  const bool per32 = kv.k_scales && kv.block == 32 && head_dim != 32;
  if (kv.k_scales && !per32 && kv.block != head_dim) return false;
  if (head_dim == 32) {
    attn_head_chunked<4, 4, T, Load8>(q, kv, n, head_dim, scale, att, out);
  } else if (head_dim == 64) {
    per32 ? attn_head_chunked<8, 4, T, Load8>(q, kv, n, head_dim, scale, att, out)
          : attn_head_chunked<8, 8, T, Load8>(q, kv, n, head_dim, scale, att, out);
  } else if (head_dim % 128 == 0 && (head_dim == 128 || !kv.k_scales || per32)) {
    // A q8 scale per whole head wider than a chunk is not handled: the reference takes it.
    per32 ? attn_head_chunked<16, 4, T, Load8>(q, kv, n, head_dim, scale, att, out)
          : attn_head_chunked<16, 16, T, Load8>(q, kv, n, head_dim, scale, att, out);
  } else {
    return false;
  }
  return true;
}
}  // namespace

void attn_head_f16_avx2(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale,
                        float* att, float* out) {
  if (!attn_head_dispatch<uint16_t, load8_f16>(q, kv, n, head_dim, scale, att, out))
    attn_head_f16_ref(q, kv, n, head_dim, scale, att, out);
}

void attn_head_q8_avx2(const float* q, const KvHeadRows& kv, int64_t n, int64_t head_dim, float scale, float* att,
                       float* out) {
  if (!attn_head_dispatch<int8_t, load8_q8>(q, kv, n, head_dim, scale, att, out))
    attn_head_q8_ref(q, kv, n, head_dim, scale, att, out);
}

}  // namespace edgelut
