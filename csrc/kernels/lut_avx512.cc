// AVX-512 (F/BW) LUT kernel: the contract of lut.h on the layout of layout.h,
// bit-identical to lut_gemm_ref for the same tables.
//
// One zmm covers a whole 64-row tile: the 32-byte run is broadcast to both
// halves and the upper half shifted right by 4, so the low 4 bits of byte r
// are row r's index. One VBMI vpermb against the chunk's table broadcast to
// the four 128-bit lanes looks up all 64 rows: vpermb reads 6 index bits and
// the table repeats every 16 bytes, so the 2 stray bits need no mask. The int16
// accumulation scheme is described in lut_x86_driver.h. Tokens are processed
// in blocks of kTokBlock so one index vector serves several lookups.
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own
// _mm512_undefined_* placeholders (GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include "dispatch.h"
#include "lut_x86_driver.h"

namespace edgelut {
namespace {

// vpermt2w indices that interleave E (even rows, words 0..31 of the first
// operand) and O (odd rows, 32..63) back into row order: lo = rows 0..31,
// hi = rows 32..63.
struct RowPerm {
  alignas(64) int16_t lo[32];
  alignas(64) int16_t hi[32];
};
constexpr RowPerm make_row_perm() {
  RowPerm r{};
  for (int j = 0; j < 32; ++j) {
    r.lo[j] = static_cast<int16_t>((j & 1 ? 32 : 0) + j / 2);
    r.hi[j] = static_cast<int16_t>((j & 1 ? 32 : 0) + 16 + j / 2);
  }
  return r;
}
constexpr RowPerm kRowPerm = make_row_perm();

// Scales and offsets of rows 16q..16q+15: fp16 loads, or (two-level) the
// sub-scale nibbles times the fp16 super-block values, one multiply each as in
// row_scale/row_min (layout.h). Shared by the LUT and int8 epilogues.
inline void load_meta16(const GroupMeta& m, int q, __m512& sc, __m512& mn) {
  if (m.sub) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.sub + 16 * q)));
    const __m512 ls = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
    const __m512 lm = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.d + 16 * q))), ls);
    mn = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.dmin + 16 * q))), lm);
    return;
  }
  sc = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.scales + 16 * q)));
  mn = m.mins ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.mins + 16 * q)))
              : _mm512_setzero_ps();
}

struct Avx512 {
  static constexpr int kTokBlock = 4;

  static void bias_tables(const int8_t* src, int8_t* dst, size_t bytes) {
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    for (size_t i = 0; i < bytes; i += 64)
      _mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), bias));
  }

  // One token (decode): chunk-outer, so one table load serves every plane.
  // Runs p and p+1 of a chunk are adjacent, so a plane pair is one 64-byte
  // load: its low nibbles are rows 0..31 of both planes, its high nibbles rows
  // 32..63. An odd last plane takes the broadcast-and-shift path. Produces cs
  // and ch in the same word order as the token-block path (word i: rows 2i,
  // 2i+1 of 0..31; word 16 + i: rows 32 + 2i, 33 + 2i).
  template <int P>
  static void one_token_block(const uint8_t* codes, const int8_t* tab0, bool prefetch, const GroupCtx& cx,
                              int64_t c0, int64_t nc, __m512i nib_shift, __m512i& cs, __m512i& ch) {
    constexpr int kPairs = P / 2;
    __m512i sl[kPairs + 1], hl[kPairs + 1], sh[kPairs + 1], hh[kPairs + 1];
    for (int q = 0; q <= kPairs; ++q) sl[q] = hl[q] = sh[q] = hh[q] = _mm512_setzero_si512();
    __m512i s1 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
    const uint8_t* run = codes + static_cast<size_t>(c0 * P) * 32;
    const int8_t* tp = tab0 + c0 * kTableSize;
    for (int64_t c = 0; c < nc; ++c, run += P * 32, tp += kTableSize) {
      if (prefetch) prefetch_chunk_codes<P>(run);
      const __m512i tab = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tp)));
      for (int q = 0; q < kPairs; ++q) {
        const __m512i v = _mm512_loadu_si512(run + 64 * q);
        const __m512i rl = _mm512_permutexvar_epi8(v, tab);
        const __m512i rh = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), tab);
        sl[q] = _mm512_add_epi16(sl[q], rl);
        hl[q] = _mm512_add_epi16(hl[q], _mm512_srli_epi16(rl, 8));
        sh[q] = _mm512_add_epi16(sh[q], rh);
        hh[q] = _mm512_add_epi16(hh[q], _mm512_srli_epi16(rh, 8));
      }
      if constexpr (P % 2 == 1) {
        const __m512i v =
            _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(run + 64 * kPairs)));
        const __m512i r = _mm512_permutexvar_epi8(_mm512_srlv_epi16(v, nib_shift), tab);
        s1 = _mm512_add_epi16(s1, r);
        h1 = _mm512_add_epi16(h1, _mm512_srli_epi16(r, 8));
      }
    }
    __m512i xs = _mm512_setzero_si512(), xh = xs, ys = xs, yh = xs;  // x: rows 0..31, y: rows 32..63
    for (int q = 0; q < kPairs; ++q) {
      const __m512i k = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(cx.icoef[2 * q])),
                                           _mm256_set1_epi16(static_cast<int16_t>(cx.icoef[2 * q + 1])), 1);
      xs = _mm512_add_epi16(xs, _mm512_mullo_epi16(sl[q], k));
      xh = _mm512_add_epi16(xh, _mm512_mullo_epi16(hl[q], k));
      ys = _mm512_add_epi16(ys, _mm512_mullo_epi16(sh[q], k));
      yh = _mm512_add_epi16(yh, _mm512_mullo_epi16(hh[q], k));
    }
    // Fold the two planes of each half: 16 words per row range.
    const auto fold = [](__m512i lo_rows, __m512i hi_rows) {
      const __m256i l = _mm256_add_epi16(_mm512_castsi512_si256(lo_rows), _mm512_extracti64x4_epi64(lo_rows, 1));
      const __m256i h = _mm256_add_epi16(_mm512_castsi512_si256(hi_rows), _mm512_extracti64x4_epi64(hi_rows, 1));
      return _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
    };
    cs = fold(xs, ys);
    ch = fold(xh, yh);
    if constexpr (P % 2 == 1) {
      const __m512i k = _mm512_set1_epi16(static_cast<int16_t>(cx.icoef[P - 1]));
      cs = _mm512_add_epi16(cs, _mm512_mullo_epi16(s1, k));
      ch = _mm512_add_epi16(ch, _mm512_mullo_epi16(h1, k));
    }
  }

  // Chunks [c0, c0 + nc) of one (tile, group) for TB tokens: the int16 sums
  // of lut_x86_driver.h, planes combined, bias not yet removed (word i: rows
  // 2i, 2i + 1 of 0..31; word 16 + i: rows 32 + 2i, 33 + 2i).
  template <int P, int TB>
  static void lookup_block(const GroupCtx& cx, const uint8_t* codes, const int8_t* const* tabs, bool prefetch,
                           int64_t c0, int64_t nc, __m512i nib_shift, __m512i cs[], __m512i ch[]) {
    for (int i = 0; i < TB; ++i) cs[i] = ch[i] = _mm512_setzero_si512();
    if constexpr (TB == 1) {
      one_token_block<P>(codes, tabs[0], prefetch, cx, c0, nc, nib_shift, cs[0], ch[0]);
    } else {
      for (int p = 0; p < P; ++p) {
        __m512i s[TB], h[TB];
        for (int i = 0; i < TB; ++i) s[i] = h[i] = _mm512_setzero_si512();
        const uint8_t* run = codes + static_cast<size_t>(c0 * P + p) * 32;
        for (int64_t c = c0; c < c0 + nc; ++c, run += P * 32) {
          if (p == 0 && prefetch) prefetch_chunk_codes<P>(run);
          const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(run)));
          const __m512i idx = _mm512_srlv_epi16(v, nib_shift);
          for (int i = 0; i < TB; ++i) {
            const __m128i t16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tabs[i] + c * kTableSize));
            const __m512i tab = _mm512_broadcast_i32x4(t16);
            const __m512i r = _mm512_permutexvar_epi8(idx, tab);
            s[i] = _mm512_add_epi16(s[i], r);
            h[i] = _mm512_add_epi16(h[i], _mm512_srli_epi16(r, 8));
          }
        }
        const __m512i k = _mm512_set1_epi16(static_cast<int16_t>(cx.icoef[p]));
        for (int i = 0; i < TB; ++i) {
          cs[i] = _mm512_add_epi16(cs[i], _mm512_mullo_epi16(s[i], k));
          ch[i] = _mm512_add_epi16(ch[i], _mm512_mullo_epi16(h[i], k));
        }
      }
    }
  }

  // Shift counts per int16 word: 0 for rows 0..31, 4 for rows 32..63.
  static __m512i make_nib_shift() { return _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1); }

  // The int16 sums with the bias removed, back in row order and widened:
  // r[q] holds int32 rows 16q..16q+15.
  static void widen_rows(__m512i cs, __m512i ch, __m512i bias, __m512i r[4]) {
    const __m512i perm_lo = _mm512_load_si512(kRowPerm.lo);
    const __m512i perm_hi = _mm512_load_si512(kRowPerm.hi);
    const __m512i even = _mm512_sub_epi16(_mm512_sub_epi16(cs, _mm512_slli_epi16(ch, 8)), bias);
    const __m512i odd = _mm512_sub_epi16(ch, bias);
    const __m512i lo = _mm512_permutex2var_epi16(even, perm_lo, odd);  // rows 0..31
    const __m512i hi = _mm512_permutex2var_epi16(even, perm_hi, odd);  // rows 32..63
    r[0] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(lo));
    r[1] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(lo, 1));
    r[2] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(hi));
    r[3] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(hi, 1));
  }

  template <int P, int TB>
  static void step(const GroupCtx& cx, const StepArgs& a) {
    const __m512i shift = make_nib_shift();
    __m512i comb[TB][4];  // int32 rows 16q..16q+15
    for (int i = 0; i < TB; ++i)
      for (int q = 0; q < 4; ++q) comb[i][q] = _mm512_setzero_si512();

    for (int64_t c0 = 0; c0 < cx.cpg; c0 += cx.block) {
      const int64_t nc = std::min<int64_t>(cx.block, cx.cpg - c0);
      __m512i cs[TB], ch[TB];
      lookup_block<P, TB>(cx, a.codes, a.tab, a.prefetch, c0, nc, shift, cs, ch);
      const __m512i bias = _mm512_set1_epi16(block_bias(cx, nc));
      for (int i = 0; i < TB; ++i) {
        __m512i r[4];
        widen_rows(cs[i], ch[i], bias, r);
        for (int q = 0; q < 4; ++q) comb[i][q] = _mm512_add_epi32(comb[i][q], r[q]);
      }
    }

    // Float epilogue in the reference's exact op order.
    const __m512 center = _mm512_set1_ps(cx.center);
    for (int q = 0; q < 4; ++q) {
      __m512 sc, mn;
      load_meta16(a.meta, q, sc, mn);
      if (a.meta.has_min()) {
        for (int i = 0; i < TB; ++i) {
          const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(comb[i][q]), _mm512_set1_ps(a.half_ts[i]));
          const __m512 as = _mm512_set1_ps(a.asum[i]);
          __m512 o = _mm512_loadu_ps(a.out[i] + 16 * q);
          o = _mm512_fmadd_ps(sc, _mm512_fmadd_ps(center, as, v), o);
          o = _mm512_fmadd_ps(mn, as, o);
          _mm512_storeu_ps(a.out[i] + 16 * q, o);
        }
      } else {
        for (int i = 0; i < TB; ++i) {
          const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(comb[i][q]), _mm512_set1_ps(a.half_ts[i]));
          float* o = a.out[i] + 16 * q;
          _mm512_storeu_ps(o, _mm512_fmadd_ps(sc, v, _mm512_loadu_ps(o)));
        }
      }
    }
  }

  // lut.h's integer sub-scale path for one (tile, super-block); as in the AVX2
  // kernel: sub-scales applied per group with vpmaddwd on the widened sums
  // (csum * aq folded into the bias), sub-min sums two groups per vpmaddwd,
  // and the float step once per super-block.
  template <int P, int TB>
  static void step_super(const GroupCtx& cx, const SuperArgs& a) {
    const __m512i shift = make_nib_shift();
    const __m512i low4 = _mm512_set1_epi32(15);
    __m512i accs[TB][4];  // int32 rows 16q..16q+15
    for (int i = 0; i < TB; ++i)
      for (int q = 0; q < 4; ++q) accs[i][q] = _mm512_setzero_si512();
    const int16_t bias0 = block_bias(cx, cx.cpg);
    for (int gi = 0; gi < a.ngroups; ++gi) {
      const int8_t* tabs[TB];
      for (int i = 0; i < TB; ++i) tabs[i] = a.tab[i] + gi * cx.cpg * kTableSize;
      __m512i cs[TB], ch[TB];
      lookup_block<P, TB>(cx, a.codes + gi * a.gbytes, tabs, a.prefetch, 0, cx.cpg, shift, cs, ch);
      const uint8_t* sub = a.meta.sub + gi * kTileRows;
      __m512i ls[4];
      for (int q = 0; q < 4; ++q)
        ls[q] = _mm512_and_si512(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sub + 16 * q))), low4);
      for (int i = 0; i < TB; ++i) {
        const int16_t k = static_cast<int16_t>(cx.csum * a.aq[i][gi]);
        __m512i r[4];
        widen_rows(cs[i], ch[i], _mm512_set1_epi16(static_cast<int16_t>(bias0 - k)), r);
        for (int q = 0; q < 4; ++q) accs[i][q] = _mm512_add_epi32(accs[i][q], _mm512_madd_epi16(r[q], ls[q]));
      }
    }
    for (int q = 0; q < 4; ++q) {
      __m512i accm[TB];
      for (int i = 0; i < TB; ++i) accm[i] = _mm512_setzero_si512();
      for (int gi = 0; gi < a.ngroups; gi += 2) {
        const uint8_t* sub = a.meta.sub + gi * kTileRows + 16 * q;
        const bool pair = gi + 1 < a.ngroups;
        const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sub));
        const __m128i b1 = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(sub + kTileRows)) : _mm_setzero_si128();
        const __m256i inter = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(b0, b1)),
                                                      _mm_unpackhi_epi8(b0, b1), 1);
        const __m512i lm = _mm512_srli_epi16(_mm512_cvtepu8_epi16(inter), 4);
        for (int i = 0; i < TB; ++i) {
          const uint32_t q0 = static_cast<uint16_t>(a.aq[i][gi]);
          const uint32_t q1 = pair ? static_cast<uint16_t>(a.aq[i][gi + 1]) : 0u;
          accm[i] = _mm512_add_epi32(accm[i], _mm512_madd_epi16(lm, _mm512_set1_epi32(static_cast<int32_t>(q0 | q1 << 16))));
        }
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.meta.d + 16 * q)));
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.meta.dmin + 16 * q)));
      for (int i = 0; i < TB; ++i) {
        float* o = a.out[i] + 16 * q;
        __m512 v = _mm512_loadu_ps(o);
        v = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(accs[i][q]), _mm512_set1_ps(0.5f * a.ts[i])), v);
        v = _mm512_fmadd_ps(dmin, _mm512_mul_ps(_mm512_cvtepi32_ps(accm[i]), _mm512_set1_ps(a.ts[i])), v);
        _mm512_storeu_ps(o, v);
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Int8 prefill (lut.h, "Int8 prefill path"): a tile-group's codes are expanded
// once into w8 = 2 * (level - center), laid out for vpdpbusd as
// [chunk][row block q][16 rows][4 bytes], then every token block multiplies
// its biased int8 activations against them. The expansion replicates each
// row's 4-bit index into the 4 bytes of its dword (one vpermb per 16 rows),
// tests bit j of byte j (vptestmb) and adds 2 * icoef[p] where it is set.

// vpermb controls: byte 4r + j of block q takes index byte 16q + r.
struct ExpandCtl {
  alignas(64) uint8_t ctl[4][64];
};
constexpr ExpandCtl make_expand_ctl() {
  ExpandCtl e{};
  for (int q = 0; q < 4; ++q)
    for (int b = 0; b < 64; ++b) e.ctl[q][b] = static_cast<uint8_t>(16 * q + b / 4);
  return e;
}
constexpr ExpandCtl kExpandCtl = make_expand_ctl();

// Expands one (tile, group) into w8 (cpg * 256 bytes) and returns, per row,
// 128 * sum_k w8 (what the +128 activation bias adds to the dot product).
template <int P>
void expand_group(const uint8_t* codes, const GroupCtx& cx, int8_t* w8, __m512i bias[4]) {
  const __m512i nib_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i bitsel = _mm512_set1_epi32(0x08040201);
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i start = _mm512_set1_epi8(static_cast<char>(-cx.csum));
  __m512i ctl[4], rs[4];
  for (int q = 0; q < 4; ++q) {
    ctl[q] = _mm512_load_si512(kExpandCtl.ctl[q]);
    rs[q] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < cx.cpg; ++c) {
    __m512i acc[4] = {start, start, start, start};
    for (int p = 0; p < P; ++p) {
      const uint8_t* run = codes + static_cast<size_t>(c * P + p) * 32;
      const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(run)));
      const __m512i idx = _mm512_srlv_epi16(v, nib_shift);  // low 4 bits of byte r: row r
      const __m512i add = _mm512_set1_epi8(static_cast<char>(2 * cx.icoef[p]));
      for (int q = 0; q < 4; ++q) {
        const __mmask64 set = _mm512_test_epi8_mask(_mm512_permutexvar_epi8(ctl[q], idx), bitsel);
        acc[q] = _mm512_mask_add_epi8(acc[q], set, acc[q], add);
      }
    }
    for (int q = 0; q < 4; ++q) {
      _mm512_storeu_si512(w8 + c * 256 + 64 * q, acc[q]);
      rs[q] = _mm512_dpbusd_epi32(rs[q], ones, acc[q]);
    }
  }
  for (int q = 0; q < 4; ++q) bias[q] = _mm512_slli_epi32(rs[q], 7);
}

// One token block against one whole tile: the output rows stay in registers
// across the groups, and each group starts its int32 sums at -bias.
struct Int8Tile {
  const int8_t* w8;        // (groups, cpg * 256) expanded weights of the tile
  const int32_t* negbias;  // (groups, 64)
  const PackedView* w;     // for the scales and offsets of (t, g)
  int64_t t = 0;
  int64_t ng = 0, cpg = 0, group = 0;
  float center = 0.0f;
  const Int8Acts* acts[4];
  float* out[4];  // 64 floats per token
};

// Groups [g0, g1); the outputs start at zero when g0 == 0, else from a.out.
template <int TB>
void int8_tile(const Int8Tile& a, int64_t g0, int64_t g1) {
  __m512 out[TB][4];
  for (int i = 0; i < TB; ++i)
    for (int q = 0; q < 4; ++q) out[i][q] = g0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(a.out[i] + 16 * q);
  const __m512 center = _mm512_set1_ps(a.center);
  for (int64_t g = g0; g < g1; ++g) {
    const int8_t* w8 = a.w8 + g * a.cpg * 256;
    __m512i acc[TB][4];
    for (int q = 0; q < 4; ++q) {
      const __m512i nb = _mm512_loadu_si512(a.negbias + g * kTileRows + 16 * q);
      for (int i = 0; i < TB; ++i) acc[i][q] = nb;
    }
    const uint8_t* xu[TB];
    for (int i = 0; i < TB; ++i) xu[i] = a.acts[i]->xu + g * a.group;
    for (int64_t c = 0; c < a.cpg; ++c) {
      __m512i wv[4];
      for (int q = 0; q < 4; ++q) wv[q] = _mm512_loadu_si512(w8 + c * 256 + 64 * q);
      for (int i = 0; i < TB; ++i) {
        int32_t xq4;
        std::memcpy(&xq4, xu[i] + c * kChunk, sizeof xq4);
        const __m512i xb = _mm512_set1_epi32(xq4);
        for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_dpbusd_epi32(acc[i][q], xb, wv[q]);
      }
    }
    // Float epilogue in the reference's exact op order.
    const GroupMeta meta = group_meta(*a.w, a.t, g);
    for (int q = 0; q < 4; ++q) {
      __m512 sc, mn;
      load_meta16(meta, q, sc, mn);
      if (meta.has_min()) {
        for (int i = 0; i < TB; ++i) {
          const __m512 hx = _mm512_set1_ps(0.5f * a.acts[i]->xscale[g]);
          const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][q]), hx);
          const __m512 as = _mm512_set1_ps(a.acts[i]->asum[g]);
          out[i][q] = _mm512_fmadd_ps(sc, _mm512_fmadd_ps(center, as, v), out[i][q]);
          out[i][q] = _mm512_fmadd_ps(mn, as, out[i][q]);
        }
      } else {
        for (int i = 0; i < TB; ++i) {
          const __m512 hx = _mm512_set1_ps(0.5f * a.acts[i]->xscale[g]);
          const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][q]), hx);
          out[i][q] = _mm512_fmadd_ps(sc, v, out[i][q]);
        }
      }
    }
  }
  for (int i = 0; i < TB; ++i)
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(a.out[i] + 16 * q, out[i][q]);
}

constexpr int64_t kInt8L1Bytes = 24 * 1024;  // expanded weights per group block

template <int P>
void int8_gemm_planes(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                      int64_t t1) {
  constexpr int kTok = 3;  // 3 tokens x 4 sums + 3 x 4 outputs + 4 weights fit the 32 zmm
  const PackedShape& s = w.shape;
  const GroupCtx cx = make_ctx(s);
  const int64_t ng = s.groups();
  const size_t gbytes = s.group_code_bytes();
  thread_local std::vector<int8_t> w8;
  thread_local std::vector<int32_t> negbias;
  w8.resize(static_cast<size_t>(ng * cx.cpg) * 256);
  negbias.resize(static_cast<size_t>(ng) * kTileRows);
  alignas(64) float tail[kTok][kTileRows];
  const int64_t gblock = std::max<int64_t>(1, kInt8L1Bytes / (cx.cpg * 256));
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t g = 0; g < ng; ++g) {
      const size_t tg = static_cast<size_t>(t * ng + g);
      __m512i bias[4];
      expand_group<P>(w.codes + tg * gbytes, cx, w8.data() + g * cx.cpg * 256, bias);
      for (int q = 0; q < 4; ++q)
        _mm512_storeu_si512(negbias.data() + g * kTileRows + 16 * q,
                            _mm512_sub_epi32(_mm512_setzero_si512(), bias[q]));
    }
    Int8Tile a;
    a.w8 = w8.data();
    a.negbias = negbias.data();
    a.w = &w;
    a.t = t;
    a.ng = ng;
    a.cpg = cx.cpg;
    a.group = s.group;
    a.center = cx.center;
    const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
    for (int64_t j0 = 0; j0 < m; j0 += kTok) {
      const int nb = static_cast<int>(std::min<int64_t>(kTok, m - j0));
      for (int i = 0; i < nb; ++i) {
        a.acts[i] = acts + j0 + i;
        a.out[i] = rows == kTileRows ? y + (j0 + i) * ldy + t * kTileRows : tail[i];
      }
      // Groups in blocks whose expanded weights stay in L1 across the tokens.
      for (int64_t g0 = 0; g0 < ng; g0 += gblock) {
        const int64_t g1 = std::min(ng, g0 + gblock);
        switch (nb) {
          case 1: int8_tile<1>(a, g0, g1); break;
          case 2: int8_tile<2>(a, g0, g1); break;
          default: int8_tile<3>(a, g0, g1); break;
        }
      }
      if (rows < kTileRows)
        for (int i = 0; i < nb; ++i)
          std::memcpy(y + (j0 + i) * ldy + t * kTileRows, tail[i], static_cast<size_t>(rows) * sizeof(float));
    }
  }
}

void int8_gemm_avx512(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                      int64_t t1) {
  switch (w.shape.planes()) {
    case 1: int8_gemm_planes<1>(w, acts, m, y, ldy, t0, t1); break;
    case 2: int8_gemm_planes<2>(w, acts, m, y, ldy, t0, t1); break;
    case 3: int8_gemm_planes<3>(w, acts, m, y, ldy, t0, t1); break;
    default: int8_gemm_planes<4>(w, acts, m, y, ldy, t0, t1); break;
  }
}

// Activation tables, bit-identical to build_tables (lut_ref.cc): the same
// float operations in the same order, one chunk's 16 entries per zmm. Lane idx
// computes ((+-a0 + +-a1) + +-a2) + +-a3 directly; for idx < 8 that is exactly
// the negation of the reference's entry 7 - idx | 8 (IEEE add, multiply and
// round-to-nearest-even are sign-symmetric), so no separate negation pass.
void build_tables_avx512(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum) {
  const int64_t cpg = s.group / kChunk;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  // Sign of a_j in lane idx: + when bit j of idx is set.
  __m512i neg[kChunk];
  for (int j = 0; j < kChunk; ++j) {
    alignas(64) int32_t m[16];
    for (int idx = 0; idx < 16; ++idx) m[idx] = (idx >> j) & 1 ? 0 : static_cast<int32_t>(0x80000000u);
    neg[j] = _mm512_load_si512(m);
  }
  const __m512 lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
  // Chunk L1 norms ((|a0| + |a1|) + |a2|) + |a3| land in element 0 of each
  // 128-bit lane (one chunk per lane); the maximum is order-independent.
  const auto max_l1 = [&](const float* xg) {
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t c = 0; c < cpg; c += 4) {
      const __m512 v = _mm512_and_ps(_mm512_loadu_ps(xg + c * kChunk), absmask);
      __m512 l1 = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0x55));
      l1 = _mm512_add_ps(l1, _mm512_shuffle_ps(v, v, 0xaa));
      l1 = _mm512_add_ps(l1, _mm512_shuffle_ps(v, v, 0xff));
      vmax = _mm512_max_ps(vmax, _mm512_maskz_mov_ps(0x1111, l1));
    }
    return _mm512_reduce_max_ps(vmax);
  };
  const auto build = [&](const float* xg, float inv_s, int8_t* out) {
    const __m512 inv = _mm512_set1_ps(inv_s);
    for (int64_t c = 0; c < cpg; ++c) {
      const float* a = xg + c * kChunk;
      __m512 t = _mm512_add_ps(_mm512_xor_ps(_mm512_set1_ps(a[0]), _mm512_castsi512_ps(neg[0])),
                               _mm512_xor_ps(_mm512_set1_ps(a[1]), _mm512_castsi512_ps(neg[1])));
      t = _mm512_add_ps(t, _mm512_xor_ps(_mm512_set1_ps(a[2]), _mm512_castsi512_ps(neg[2])));
      t = _mm512_add_ps(t, _mm512_xor_ps(_mm512_set1_ps(a[3]), _mm512_castsi512_ps(neg[3])));
      __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(t, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(lim, _mm512_max_ps(nlim, q));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * kTableSize), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
    }
  };
  build_tables_x86(s, x, tab, tscale, asum, max_l1, build);
}

}  // namespace

const KernelSet& kernels_avx512() {
  static const KernelSet k{lut_gemm_x86<Avx512>, lut_gemm_x86<Avx512>, int8_gemm_avx512, build_tables_avx512};
  return k;
}

}  // namespace edgelut
