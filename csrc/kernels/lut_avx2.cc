// AVX2 LUT kernel: the contract of lut.h on the layout of layout.h,
// bit-identical to lut_gemm_ref for the same tables.
//
// A 64-row tile is two ymm per plane: the low nibbles of the 32-byte run are
// rows 0..31, the high nibbles rows 32..63; vpshufb against the chunk's table
// (broadcast to both 128-bit lanes) looks up 32 rows at once. The int16
// accumulation scheme is described in lut_x86_driver.h. Tokens are processed
// in blocks of kTokBlock (2: AVX2 has only 16 registers) so one pair of index
// vectors serves several lookups. The int8 prefill kernel (bit-identical to
// int8_gemm_ref) is further down.
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

  // Chunks [c0, c0 + nc) of one (tile, group) for TB tokens: the int16 sums
  // of lut_x86_driver.h, planes combined, bias not yet removed. [half]: rows
  // 0..31, 32..63; cs holds whole words, ch the odd rows (high bytes).
  template <int P, int TB>
  static void lookup_block(const GroupCtx& cx, const uint8_t* codes, const int8_t* const* tabs, bool prefetch,
                           int64_t c0, int64_t nc, __m256i cs[][2], __m256i ch[][2]) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
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
      const uint8_t* run = codes + static_cast<size_t>(c0 * P + p0) * 32;
      for (int64_t c = c0; c < c0 + nc; ++c, run += P * 32) {
        if (p0 == 0 && prefetch) prefetch_chunk_codes<P>(run);
        __m256i tab[TB];
        for (int i = 0; i < TB; ++i)
          tab[i] = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(tabs[i] + c * kTableSize)));
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
  }

  template <int P, int TB>
  static void step(const GroupCtx& cx, const StepArgs& a) {
    __m256i comb[TB][8];  // int32 rows 8q..8q+7
    for (int i = 0; i < TB; ++i)
      for (int q = 0; q < 8; ++q) comb[i][q] = _mm256_setzero_si256();

    for (int64_t c0 = 0; c0 < cx.cpg; c0 += cx.block) {
      const int64_t nc = std::min<int64_t>(cx.block, cx.cpg - c0);
      __m256i cs[TB][2], ch[TB][2];
      lookup_block<P, TB>(cx, a.codes, a.tab, a.prefetch, c0, nc, cs, ch);
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

  // lut.h's integer sub-scale path for one (tile, super-block): per group, the
  // int16 sums with csum * aq folded into the bias, widened and multiplied by
  // the 4-bit sub-scales with vpmaddwd (a widened int32 lane is the word pair
  // (value, sign) and a sub-scale lane (ls, 0), so the product is exact); the
  // sub-min sums and the float step once per super-block.
  template <int P, int TB>
  static void step_super(const GroupCtx& cx, const SuperArgs& a) {
    __m256i accs[TB][8];  // int32 rows 8q..8q+7
    for (int i = 0; i < TB; ++i)
      for (int q = 0; q < 8; ++q) accs[i][q] = _mm256_setzero_si256();
    const __m256i low4 = _mm256_set1_epi32(15);
    const int16_t bias0 = block_bias(cx, cx.cpg);
    for (int gi = 0; gi < a.ngroups; ++gi) {
      const int8_t* tabs[TB];
      for (int i = 0; i < TB; ++i) tabs[i] = a.tab[i] + gi * cx.cpg * kTableSize;
      __m256i cs[TB][2], ch[TB][2];
      lookup_block<P, TB>(cx, a.codes + gi * a.gbytes, tabs, a.prefetch, 0, cx.cpg, cs, ch);
      const uint8_t* sub = a.meta.sub + gi * kTileRows;
      for (int u = 0; u < 2; ++u) {
        __m256i ls[4];  // rows 32u + 8q..: order of widen_rows' outputs
        for (int q = 0; q < 4; ++q)
          ls[q] = _mm256_and_si256(
              _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sub + 32 * u + 8 * q))), low4);
        for (int i = 0; i < TB; ++i) {
          const int16_t k = static_cast<int16_t>(cx.csum * a.aq[i][gi]);
          const __m256i bias = _mm256_set1_epi16(static_cast<int16_t>(bias0 - k));
          const __m256i even = _mm256_sub_epi16(_mm256_sub_epi16(cs[i][u], _mm256_slli_epi16(ch[i][u], 8)), bias);
          const __m256i odd = _mm256_sub_epi16(ch[i][u], bias);
          const __m256i lo = _mm256_unpacklo_epi16(even, odd);  // rows 0..7 | 16..23
          const __m256i hi = _mm256_unpackhi_epi16(even, odd);  // rows 8..15 | 24..31
          const __m256i r[4] = {_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo)),
                                _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi)),
                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1)),
                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1))};
          for (int q = 0; q < 4; ++q)
            accs[i][4 * u + q] = _mm256_add_epi32(accs[i][4 * u + q], _mm256_madd_epi16(r[q], ls[q]));
        }
      }
    }
    // Sub-min sums two groups at a time: the bytes of groups g and g + 1
    // interleaved and zero-extended give word pairs (lm_g, lm_g+1) per row,
    // against the pair (aq_g, aq_g+1) in one vpmaddwd.
    for (int q = 0; q < 8; ++q) {
      __m256i accm[TB];
      for (int i = 0; i < TB; ++i) accm[i] = _mm256_setzero_si256();
      for (int gi = 0; gi < a.ngroups; gi += 2) {
        const uint8_t* sub = a.meta.sub + gi * kTileRows + 8 * q;
        const bool pair = gi + 1 < a.ngroups;
        const __m128i b0 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sub));
        const __m128i b1 = pair ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sub + kTileRows)) : _mm_setzero_si128();
        const __m256i lm = _mm256_srli_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(b0, b1)), 4);
        for (int i = 0; i < TB; ++i) {
          const uint32_t q0 = static_cast<uint16_t>(a.aq[i][gi]);
          const uint32_t q1 = pair ? static_cast<uint16_t>(a.aq[i][gi + 1]) : 0u;
          const __m256i aq = _mm256_set1_epi32(static_cast<int32_t>(q0 | q1 << 16));
          accm[i] = _mm256_add_epi32(accm[i], _mm256_madd_epi16(lm, aq));
        }
      }
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.meta.d + 8 * q)));
      const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.meta.dmin + 8 * q)));
      for (int i = 0; i < TB; ++i) {
        float* o = a.out[i] + 8 * q;
        __m256 v = _mm256_loadu_ps(o);
        v = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(accs[i][q]), _mm256_set1_ps(0.5f * a.ts[i])), v);
        v = _mm256_fmadd_ps(dmin, _mm256_mul_ps(_mm256_cvtepi32_ps(accm[i]), _mm256_set1_ps(a.ts[i])), v);
        _mm256_storeu_ps(o, v);
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
  const int64_t cpg = s.group / kChunk;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 neg[2][kChunk];  // [half][j]: sign flip of a_j in lane idx = 8 * half + i
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < kChunk; ++j) {
      alignas(32) int32_t m[8];
      for (int i = 0; i < 8; ++i) m[i] = ((8 * h + i) >> j) & 1 ? 0 : static_cast<int32_t>(0x80000000u);
      neg[h][j] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(m)));
    }
  const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
  const auto max_l1 = [&](const float* xg) {
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
    return std::max(lanes[0], lanes[4]);
  };
  const auto build = [&](const float* xg, float inv_s, int8_t* out) {
    const __m256 inv = _mm256_set1_ps(inv_s);
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
  };
  build_tables_x86(s, x, tab, tscale, asum, max_l1, build);
}

// ---------------------------------------------------------------------------
// Int8 prefill (lut.h, "Int8 prefill path") on AVX2: no VNNI, so the int32
// dot products go through vpmaddubsw (biased uint8 activations x int8 weights
// -> int16 pair sums) and vpmaddwd against ones (-> int32).
//
// A tile-group's codes are expanded once into w8 = 2 * (level - center), laid
// out [chunk][row block b][8 rows][4 bytes] (a dword is one row's 4 weights of
// the chunk, so a broadcast dword of activations meets 8 rows per ymm). The
// expansion replicates each code byte into a dword (vpshufb), tests bit j of
// byte j against 0x08040201 (low nibble: rows 0..31) or 0x80402010 (high
// nibble: rows 32..63) and adds 2 * icoef[p] where it is set.
//
// Exactness: |w8| <= 15 for every type (q4: 2 * 7.5; ternary: 2), xu <= 255,
// so a vpmaddubsw pair is at most 2 * 255 * 15 = 7650 (never saturates) and
// the int16 sum of four chunks' pairs at most 30600 < 32767. Four chunks are
// therefore added as int16 before one vpmaddwd widens them, and every group
// (8, 16 or 32 chunks) is a whole number of such quads. The +128 bias of the
// activations adds 128 * sum_k w8 per row; the sums start at its negation.

// Rows 8b..8b+7 of a run are bytes 8b..8b+7; byte r of the qword goes to dword r.
alignas(32) constexpr int8_t kRepCtl[32] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                            4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7};

// Per-thread buffers of one group block of one tile, each used from its first
// 64-byte boundary (aligned_buffer): a 32-byte load that straddles two cache
// lines costs two (measured: 20% of the whole kernel for w8).
struct Int8Scratch {
  std::vector<int8_t> w8;       // (groups, cpg * 256) expanded weights
  std::vector<int32_t> negbias; // (groups, 64) -128 * sum_k w8 per row
  std::vector<float> sc, mn;    // (groups, 64) row scales and offsets as the epilogue uses them
  std::vector<float> out;       // (m, 64) one tile's outputs per token
};

inline Int8Scratch& int8_scratch() {
  thread_local Int8Scratch s;
  return s;
}

// malloc aligns to at least 16 bytes, so the skip is whole elements.
template <class T>
T* aligned_buffer(std::vector<T>& v, size_t count) {
  v.resize(count + 64 / sizeof(T));
  const size_t skip = (64 - reinterpret_cast<uintptr_t>(v.data()) % 64) % 64;
  return v.data() + skip / sizeof(T);
}

// Expands one (tile, group) into w8 (cpg * 256 bytes) and negbias (64 rows).
template <int P>
void expand_group_avx2(const uint8_t* codes, const GroupCtx& cx, int8_t* w8, int32_t* negbias) {
  const __m256i ctl = _mm256_load_si256(reinterpret_cast<const __m256i*>(kRepCtl));
  const __m256i lowsel = _mm256_set1_epi32(0x08040201);
  const __m256i highsel = _mm256_set1_epi32(static_cast<int32_t>(0x80402010u));
  const __m256i start = _mm256_set1_epi8(static_cast<char>(-cx.csum));
  for (int64_t c = 0; c < cx.cpg; ++c) {
    __m256i acc[8];
    for (int b = 0; b < 8; ++b) acc[b] = start;
    for (int p = 0; p < P; ++p) {
      const uint8_t* run = codes + static_cast<size_t>(c * P + p) * 32;
      const __m256i add = _mm256_set1_epi8(static_cast<char>(2 * cx.icoef[p]));
      for (int b = 0; b < 4; ++b) {
        int64_t q8;
        std::memcpy(&q8, run + 8 * b, sizeof q8);
        const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi64x(q8), ctl);
        const __m256i lo = _mm256_cmpeq_epi8(_mm256_and_si256(rep, lowsel), lowsel);
        const __m256i hi = _mm256_cmpeq_epi8(_mm256_and_si256(rep, highsel), highsel);
        acc[b] = _mm256_add_epi8(acc[b], _mm256_and_si256(lo, add));
        acc[b + 4] = _mm256_add_epi8(acc[b + 4], _mm256_and_si256(hi, add));
      }
    }
    for (int b = 0; b < 8; ++b) _mm256_storeu_si256(reinterpret_cast<__m256i*>(w8 + c * 256 + 32 * b), acc[b]);
  }
  // Row sums: pairs of |w8| <= 15 and at most 32 chunks keep int16 exact.
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int b = 0; b < 8; ++b) {
    __m256i s16 = _mm256_setzero_si256();
    for (int64_t c = 0; c < cx.cpg; ++c)
      s16 = _mm256_add_epi16(
          s16, _mm256_maddubs_epi16(ones8, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w8 + c * 256 + 32 * b))));
    const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(s16, ones16), 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(negbias + 8 * b), _mm256_sub_epi32(_mm256_setzero_si256(), bias));
  }
}

// One token, one group: the exact int32 dots (w8 . xq) of the 64 rows (8 row
// blocks, each activation broadcast once), then the float epilogue in the
// reference's op order.
template <bool kMin>
inline void int8_group(const int8_t* w8, const int32_t* negbias, const float* sc, const float* mn, const uint8_t* xu,
                       int64_t cpg, float half_xs, float asum, float center, float* out) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc[8];
  for (int b = 0; b < 8; ++b) acc[b] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(negbias + 8 * b));
  for (int64_t c0 = 0; c0 < cpg; c0 += 4) {
    __m256i x[4];
    for (int cc = 0; cc < 4; ++cc) {
      int32_t v;
      std::memcpy(&v, xu + (c0 + cc) * kChunk, sizeof v);
      x[cc] = _mm256_set1_epi32(v);
    }
    const int8_t* wq = w8 + c0 * 256;
    for (int b = 0; b < 8; ++b) {
      const int8_t* wp = wq + 32 * b;
      const auto ld = [wp](int cc) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 256 * cc)); };
      const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(x[0], ld(0)), _mm256_maddubs_epi16(x[1], ld(1)));
      const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(x[2], ld(2)), _mm256_maddubs_epi16(x[3], ld(3)));
      acc[b] = _mm256_add_epi32(acc[b], _mm256_madd_epi16(_mm256_add_epi16(s01, s23), ones16));
    }
  }
  const __m256 hx = _mm256_set1_ps(half_xs);
  for (int b = 0; b < 8; ++b) {
    const int r = 8 * b;
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[b]), hx);
    __m256 o = _mm256_loadu_ps(out + r);
    if constexpr (kMin) {
      const __m256 as = _mm256_set1_ps(asum);
      o = _mm256_fmadd_ps(_mm256_loadu_ps(sc + r), _mm256_fmadd_ps(_mm256_set1_ps(center), as, v), o);
      o = _mm256_fmadd_ps(_mm256_loadu_ps(mn + r), as, o);
    } else {
      o = _mm256_fmadd_ps(_mm256_loadu_ps(sc + r), v, o);
    }
    _mm256_storeu_ps(out + r, o);
  }
}

constexpr int64_t kInt8BlockBytes = 16 * 1024;  // expanded weights per group block (stays in L1 across tokens)

template <int P>
void int8_gemm_avx2_planes(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                           int64_t t1) {
  const PackedShape& s = w.shape;
  const GroupCtx cx = make_ctx(s);
  const int64_t ng = s.groups();
  const size_t gbytes = s.group_code_bytes();
  const int64_t gblock = std::min(ng, std::max<int64_t>(1, kInt8BlockBytes / (cx.cpg * 256)));
  Int8Scratch& scr = int8_scratch();
  int8_t* const w8buf = aligned_buffer(scr.w8, static_cast<size_t>(gblock * cx.cpg) * 256);
  int32_t* const negbias = aligned_buffer(scr.negbias, static_cast<size_t>(gblock) * kTileRows);
  float* const scales = aligned_buffer(scr.sc, static_cast<size_t>(gblock) * kTileRows);
  float* const mins = aligned_buffer(scr.mn, static_cast<size_t>(gblock) * kTileRows);
  float* const outs = aligned_buffer(scr.out, static_cast<size_t>(m) * kTileRows);
  const bool has_min = s.asym;
  for (int64_t t = t0; t < t1; ++t) {
    std::fill(outs, outs + m * kTileRows, 0.0f);
    for (int64_t g0 = 0; g0 < ng; g0 += gblock) {
      const int64_t nb = std::min(gblock, ng - g0);
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t g = g0 + i;
        expand_group_avx2<P>(w.codes + static_cast<size_t>(t * ng + g) * gbytes, cx,
                             w8buf + i * cx.cpg * 256, negbias + i * kTileRows);
        const GroupMeta meta = group_meta(w, t, g);
        for (int q = 0; q < 8; ++q) {
          __m256 vs, vm;
          Avx2::load_meta(meta, q, vs, vm);
          _mm256_storeu_ps(scales + i * kTileRows + 8 * q, vs);
          _mm256_storeu_ps(mins + i * kTileRows + 8 * q, vm);
        }
      }
      for (int64_t j = 0; j < m; ++j) {
        const Int8Acts& a = acts[j];
        float* out = outs + j * kTileRows;
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t g = g0 + i;
          const int8_t* w8 = w8buf + i * cx.cpg * 256;
          const int32_t* nbias = negbias + i * kTileRows;
          const float* gs = scales + i * kTileRows;
          const float* gm = mins + i * kTileRows;
          const uint8_t* xu = a.xu + g * s.group;
          const float half_xs = 0.5f * a.xscale[g];
          if (has_min)
            int8_group<true>(w8, nbias, gs, gm, xu, cx.cpg, half_xs, a.asum[g], cx.center, out);
          else
            int8_group<false>(w8, nbias, gs, gm, xu, cx.cpg, half_xs, a.asum[g], cx.center, out);
        }
      }
    }
    const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
    for (int64_t j = 0; j < m; ++j)
      std::memcpy(y + j * ldy + t * kTileRows, outs + j * kTileRows, static_cast<size_t>(rows) * sizeof(float));
  }
}

void int8_gemm_avx2(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                    int64_t t1) {
  switch (w.shape.planes()) {
    case 1: int8_gemm_avx2_planes<1>(w, acts, m, y, ldy, t0, t1); break;
    case 2: int8_gemm_avx2_planes<2>(w, acts, m, y, ldy, t0, t1); break;
    case 3: int8_gemm_avx2_planes<3>(w, acts, m, y, ldy, t0, t1); break;
    default: int8_gemm_avx2_planes<4>(w, acts, m, y, ldy, t0, t1); break;
  }
}

}  // namespace

const KernelSet& kernels_avx2() {
  static const KernelSet k{lut_gemm_x86<Avx2>, lut_gemm_x86<Avx2>, int8_gemm_avx2, build_tables_avx2};
  return k;
}

}  // namespace edgelut
