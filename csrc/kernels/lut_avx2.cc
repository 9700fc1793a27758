// AVX2 LUT kernel: the contract of lut.h on the layout of layout.h,
// bit-identical to lut_gemm_ref for the same tables.
//
// A 64-row tile is two ymm per plane: the low nibbles of the 32-byte run are
// rows 0..31, the high nibbles rows 32..63; vpshufb against the chunk's table
// (broadcast to both 128-bit lanes) looks up 32 rows at once. The int16
// accumulation scheme is described in lut_x86_driver.h. Tokens are processed
// in blocks of kTokBlock (2: AVX2 has only 16 registers) so one pair of index
// vectors serves several lookups.
#include <immintrin.h>

#include "dispatch.h"
#include "lut_x86_driver.h"

namespace edgelut {
namespace {

struct Avx2 {
  static constexpr int kTokBlock = 2;

  static void bias_tables(const int8_t* src, int8_t* dst, size_t bytes) {
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    for (size_t i = 0; i < bytes; i += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_xor_si256(v, bias));
    }
  }

  // Even-row and odd-row int16 sums of 32 rows -> int32 rows in order (4 x 8).
  static void widen_rows(__m256i even, __m256i odd, __m256i* acc) {
    const __m256i a = _mm256_unpacklo_epi16(even, odd);  // rows 0..7 | 16..23
    const __m256i b = _mm256_unpackhi_epi16(even, odd);  // rows 8..15 | 24..31
    acc[0] = _mm256_add_epi32(acc[0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)));
    acc[1] = _mm256_add_epi32(acc[1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(b)));
    acc[2] = _mm256_add_epi32(acc[2], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1)));
    acc[3] = _mm256_add_epi32(acc[3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(b, 1)));
  }

  template <int P, int TB>
  static void step(const GroupCtx& cx, const StepArgs& a) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);

    __m256i comb[TB][8];  // int32 rows 8q..8q+7
    for (int i = 0; i < TB; ++i)
      for (int q = 0; q < 8; ++q) comb[i][q] = _mm256_setzero_si256();

    for (int64_t c0 = 0; c0 < cx.cpg; c0 += cx.block) {
      const int64_t nc = std::min<int64_t>(cx.block, cx.cpg - c0);
      __m256i cs[TB][2], ch[TB][2];  // [half]: rows 0..31, 32..63
      for (int i = 0; i < TB; ++i)
        for (int u = 0; u < 2; ++u) cs[i][u] = ch[i][u] = _mm256_setzero_si256();
      // One token: two planes per pass share each table load and give the
      // core two independent chains; token blocks already have that.
      constexpr int kPG = TB == 1 && P > 1 ? 2 : 1;
      for (int p0 = 0; p0 < P; p0 += kPG) {
        const int np = std::min(kPG, P - p0);
        __m256i s[TB][kPG][2], h[TB][kPG][2];
        for (int i = 0; i < TB; ++i)
          for (int pp = 0; pp < kPG; ++pp)
            for (int u = 0; u < 2; ++u) s[i][pp][u] = h[i][pp][u] = _mm256_setzero_si256();
        const uint8_t* run = a.codes + static_cast<size_t>(c0 * P + p0) * 32;
        for (int64_t c = c0; c < c0 + nc; ++c, run += P * 32) {
          __m256i tab[TB];
          for (int i = 0; i < TB; ++i)
            tab[i] = _mm256_broadcastsi128_si256(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.tab[i] + c * kTableSize)));
          for (int pp = 0; pp < kPG; ++pp) {
            if (pp >= np) break;
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(run + 32 * pp));
            const __m256i idx[2] = {_mm256_and_si256(v, low4), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)};
            for (int i = 0; i < TB; ++i)
              for (int u = 0; u < 2; ++u) {
                const __m256i r = _mm256_shuffle_epi8(tab[i], idx[u]);
                s[i][pp][u] = _mm256_add_epi16(s[i][pp][u], r);
                h[i][pp][u] = _mm256_add_epi16(h[i][pp][u], _mm256_srli_epi16(r, 8));
              }
          }
        }
        for (int pp = 0; pp < np; ++pp) {
          const __m256i k = _mm256_set1_epi16(static_cast<int16_t>(cx.icoef[p0 + pp]));
          for (int i = 0; i < TB; ++i)
            for (int u = 0; u < 2; ++u) {
              cs[i][u] = _mm256_add_epi16(cs[i][u], _mm256_mullo_epi16(s[i][pp][u], k));
              ch[i][u] = _mm256_add_epi16(ch[i][u], _mm256_mullo_epi16(h[i][pp][u], k));
            }
        }
      }
      const __m256i bias = _mm256_set1_epi16(block_bias(cx, nc));
      for (int i = 0; i < TB; ++i)
        for (int u = 0; u < 2; ++u) {
          const __m256i even = _mm256_sub_epi16(_mm256_sub_epi16(cs[i][u], _mm256_slli_epi16(ch[i][u], 8)), bias);
          const __m256i odd = _mm256_sub_epi16(ch[i][u], bias);
          widen_rows(even, odd, comb[i] + 4 * u);
        }
    }

    // Float epilogue in the reference's exact op order.
    const __m256 center = _mm256_set1_ps(cx.center);
    for (int q = 0; q < 8; ++q) {
      __m256 sc, mn;
      load_meta(a.meta, q, sc, mn);
      if (a.meta.has_min()) {
        for (int i = 0; i < TB; ++i) {
          const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(comb[i][q]), _mm256_set1_ps(a.half_ts[i]));
          const __m256 as = _mm256_set1_ps(a.asum[i]);
          __m256 o = _mm256_loadu_ps(a.out[i] + 8 * q);
          o = _mm256_fmadd_ps(sc, _mm256_fmadd_ps(center, as, v), o);
          o = _mm256_fmadd_ps(mn, as, o);
          _mm256_storeu_ps(a.out[i] + 8 * q, o);
        }
      } else {
        for (int i = 0; i < TB; ++i) {
          const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(comb[i][q]), _mm256_set1_ps(a.half_ts[i]));
          float* o = a.out[i] + 8 * q;
          _mm256_storeu_ps(o, _mm256_fmadd_ps(sc, v, _mm256_loadu_ps(o)));
        }
      }
    }
  }

  // Scales and offsets of rows 8q..8q+7: fp16 loads, or (two-level) the
  // sub-scale nibbles times the fp16 super-block values, one multiply each as
  // in row_scale/row_min (layout.h).
  static void load_meta(const GroupMeta& m, int q, __m256& sc, __m256& mn) {
    if (m.sub) {
      const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m.sub + 8 * q)));
      const __m256 ls = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
      const __m256 lm = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
      sc = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.d + 8 * q))), ls);
      mn = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.dmin + 8 * q))), lm);
      return;
    }
    sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.scales + 8 * q)));
    mn = m.mins ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.mins + 8 * q)))
                : _mm256_setzero_ps();
  }
};

// Activation tables, bit-identical to build_tables (lut_ref.cc); see
// build_tables_avx512 for why lane idx can be computed directly. One chunk is
// two ymm: entries 0..7 and 8..15.
void build_tables_avx2(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum) {
  const int64_t ng = s.groups(), G = s.group, cpg = G / kChunk;
  const int64_t full = s.k / G;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 neg[2][kChunk];  // [half][j]: sign flip of a_j in lane idx = 8 * half + i
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < kChunk; ++j) {
      alignas(32) int32_t m[8];
      for (int i = 0; i < 8; ++i) m[i] = ((8 * h + i) >> j) & 1 ? 0 : static_cast<int32_t>(0x80000000u);
      neg[h][j] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(m)));
    }
  const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
  for (int64_t g = 0; g < full; ++g) {
    const float* xg = x + g * G;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t c = 0; c < cpg; c += 2) {
      const __m256 v = _mm256_and_ps(_mm256_loadu_ps(xg + c * kChunk), absmask);
      __m256 l1 = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0x55));
      l1 = _mm256_add_ps(l1, _mm256_shuffle_ps(v, v, 0xaa));
      l1 = _mm256_add_ps(l1, _mm256_shuffle_ps(v, v, 0xff));
      vmax = _mm256_max_ps(vmax, _mm256_blend_ps(_mm256_setzero_ps(), l1, 0x11));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    const float maxabs = std::max(lanes[0], lanes[4]);
    float sum = 0.0f;
    for (int64_t i = 0; i < G; ++i) sum += xg[i];
    asum[g] = sum;
    tscale[g] = maxabs / 127.0f;
    const __m256 inv = _mm256_set1_ps(maxabs > 0.0f ? 127.0f / maxabs : 0.0f);
    int8_t* out = tab + g * cpg * kTableSize;
    for (int64_t c = 0; c < cpg; ++c) {
      const float* a = xg + c * kChunk;
      __m256i iq[2];
      for (int h = 0; h < 2; ++h) {
        __m256 t = _mm256_add_ps(_mm256_xor_ps(_mm256_set1_ps(a[0]), neg[h][0]),
                                 _mm256_xor_ps(_mm256_set1_ps(a[1]), neg[h][1]));
        t = _mm256_add_ps(t, _mm256_xor_ps(_mm256_set1_ps(a[2]), neg[h][2]));
        t = _mm256_add_ps(t, _mm256_xor_ps(_mm256_set1_ps(a[3]), neg[h][3]));
        __m256 q = _mm256_round_ps(_mm256_mul_ps(t, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_min_ps(lim, _mm256_max_ps(nlim, q));
        iq[h] = _mm256_cvttps_epi32(q);
      }
      // int32 -> int16 packs per 128-bit lane; put the quarters back in order.
      const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(iq[0], iq[1]), 0xd8);
      const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * kTableSize), b);
    }
  }
  if (full < ng) build_tables_groups_ref(s, x, full, ng, tab, tscale, asum);
}

}  // namespace

const KernelSet& kernels_avx2() {
  static const KernelSet k{lut_gemm_x86<Avx2>, lut_gemm_x86<Avx2>, nullptr, build_tables_avx2};
  return k;
}

}  // namespace edgelut
