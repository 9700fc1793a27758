// NEON LUT kernel (AArch64 Advanced SIMD), bit-identical to lut_gemm_ref.
//
// The lookup is `tbl` (vqtbl1q_s8): the 16-entry int8 table of a chunk sits in
// one register, and the chunk's 32-byte run gives four 16-lane index vectors:
// low nibbles of bytes 0-15 / 16-31 are tile rows 0-15 / 16-31, high nibbles
// are rows 32-47 / 48-63. Each plane accumulates its looked-up entries in int16
// (at most 32 chunks of |127| per group, so no overflow), planes are combined
// with icoef into int32, and the float epilogue follows lut.h's op order with
// vfmaq_f32 exactly where the reference calls std::fma.
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "dispatch.h"
#include "lut.h"
#include "tile_walk.h"

namespace edgelut {

namespace {

// Tokens computed together by the GEMM so the nibble split of a group's codes
// is done once per block instead of once per token.
constexpr int kTokenBlock = 8;
// Largest (chunks per group) * planes: group 128 / 4 * 4 planes.
constexpr int kMaxRunsPerGroup = 128 / kChunk * 4;

// The four index vectors of one 32-byte run: q[i] holds rows 16i..16i+15.
struct RunIdx {
  uint8x16_t q[4];
};

inline RunIdx split_run(const uint8_t* run) {
  const uint8x16_t lo = vld1q_u8(run), hi = vld1q_u8(run + 16);
  const uint8x16_t mask = vdupq_n_u8(0x0f);
  return {{vandq_u8(lo, mask), vandq_u8(hi, mask), vshrq_n_u8(lo, 4), vshrq_n_u8(hi, 4)}};
}

// acc[k] holds rows 8k..8k+7 of one plane. Written out rather than looped so
// the accumulators stay in registers at -O2 (a loop here spills them).
inline void lookup_add(int8x16_t tbl, const RunIdx& ix, int16x8_t acc[8]) {
  const int8x16_t v0 = vqtbl1q_s8(tbl, ix.q[0]), v1 = vqtbl1q_s8(tbl, ix.q[1]);
  const int8x16_t v2 = vqtbl1q_s8(tbl, ix.q[2]), v3 = vqtbl1q_s8(tbl, ix.q[3]);
  acc[0] = vaddw_s8(acc[0], vget_low_s8(v0));
  acc[1] = vaddw_high_s8(acc[1], v0);
  acc[2] = vaddw_s8(acc[2], vget_low_s8(v1));
  acc[3] = vaddw_high_s8(acc[3], v1);
  acc[4] = vaddw_s8(acc[4], vget_low_s8(v2));
  acc[5] = vaddw_high_s8(acc[5], v2);
  acc[6] = vaddw_s8(acc[6], vget_low_s8(v3));
  acc[7] = vaddw_high_s8(acc[7], v3);
}

// comb[j] holds rows 4j..4j+3: comb += coef * acc.
inline void combine_plane(const int16x8_t acc[8], int16_t coef, int32x4_t comb[16]) {
  for (int i = 0; i < 8; ++i) {
    comb[2 * i] = vmlal_n_s16(comb[2 * i], vget_low_s16(acc[i]), coef);
    comb[2 * i + 1] = vmlal_high_n_s16(comb[2 * i + 1], acc[i], coef);
  }
}

inline float32x4_t load_fp16x4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

// Two-level scales: 4 rows' s = d * ls and m = dmin * lm, the same single
// multiplies as row_scale/row_min (layout.h).
inline void two_level_x4(const GroupMeta& m, int j, float32x4_t& sc, float32x4_t& mn) {
  uint8_t b[4];
  std::memcpy(b, m.sub + 4 * j, 4);
  const uint32x4_t raw = {b[0], b[1], b[2], b[3]};
  const float32x4_t ls = vcvtq_f32_u32(vandq_u32(raw, vdupq_n_u32(15)));
  const float32x4_t lm = vcvtq_f32_u32(vshrq_n_u32(raw, 4));
  sc = vmulq_f32(load_fp16x4(m.d + 4 * j), ls);
  mn = vmulq_f32(load_fp16x4(m.dmin + 4 * j), lm);
}

// out[r] += the group's contribution, in lut.h's exact op order.
inline void apply_group(const int32x4_t comb[16], const GroupMeta& e, float center_f, float tscale, float asum,
                        float* out) {
  const float32x4_t half_ts = vdupq_n_f32(0.5f * tscale);
  const float32x4_t as = vdupq_n_f32(asum);
  const float32x4_t center = vdupq_n_f32(center_f);
  for (int j = 0; j < 16; ++j) {
    const float32x4_t v = vmulq_f32(vcvtq_f32_s32(comb[j]), half_ts);
    float32x4_t o = vld1q_f32(out + 4 * j);
    if (e.sub) {
      float32x4_t sc, mn;
      two_level_x4(e, j, sc, mn);
      o = vfmaq_f32(o, sc, vfmaq_f32(v, center, as));
      o = vfmaq_f32(o, mn, as);
    } else if (e.mins) {
      o = vfmaq_f32(o, load_fp16x4(e.scales + 4 * j), vfmaq_f32(v, center, as));
      o = vfmaq_f32(o, load_fp16x4(e.mins + 4 * j), as);
    } else {
      o = vfmaq_f32(o, load_fp16x4(e.scales + 4 * j), v);
    }
    vst1q_f32(out + 4 * j, o);
  }
}

// lut.h's integer sub-scale path: SuperAcc (tile_walk.h) with its per-group
// step vectorised; the per-super-block float step is SuperAcc::flush.
inline void add_group_int(const int32x4_t comb[16], const uint8_t* sub, int32_t csum, int32_t aq, SuperAcc& sa) {
  const int32x4_t k = vdupq_n_s32(csum * aq), vaq = vdupq_n_s32(aq);
  const uint32x4_t low4 = vdupq_n_u32(15);
  for (int i = 0; i < 4; ++i) {
    const uint8x16_t b = vld1q_u8(sub + 16 * i);
    const uint16x8_t w[2] = {vmovl_u8(vget_low_u8(b)), vmovl_high_u8(b)};
    for (int h = 0; h < 4; ++h) {
      const uint32x4_t raw = h % 2 == 0 ? vmovl_u16(vget_low_u16(w[h / 2])) : vmovl_high_u16(w[h / 2]);
      const int j = 4 * i + h;  // rows 4j..4j+3
      const int32x4_t ls = vreinterpretq_s32_u32(vandq_u32(raw, low4));
      const int32x4_t lm = vreinterpretq_s32_u32(vshrq_n_u32(raw, 4));
      vst1q_s32(sa.s + 4 * j, vmlaq_s32(vld1q_s32(sa.s + 4 * j), vaddq_s32(comb[j], k), ls));
      vst1q_s32(sa.m + 4 * j, vmlaq_s32(vld1q_s32(sa.m + 4 * j), lm, vaq));
    }
  }
}

// One group's comb into out: the float epilogue, or on the integer sub-scale
// path the super-block sums (flushed after its last group). Built once per
// call so the per-group step does not re-derive the path from the shape.
struct GroupFinish {
  explicit GroupFinish(const PackedShape& s)
      : int_path(s.int_subscales()),
        gps(s.groups_per_super()),
        ng(s.groups()),
        center(qtype_traits(s.qtype).center),
        csum(icoef_sum(qtype_traits(s.qtype))) {}

  void operator()(const int32x4_t comb[16], const GroupMeta& e, int64_t g, float tscale, float asum, SuperAcc& sa,
                  float* out) const {
    if (!int_path) {
      apply_group(comb, e, center, tscale, asum, out);
      return;
    }
    add_group_int(comb, e.sub, csum, asum_steps(asum, tscale), sa);
    sa.end_group(g, gps, ng, e, tscale, out);
  }

  bool int_path;
  int64_t gps, ng;
  float center;
  int32_t csum;
};

inline void zero(int16x8_t acc[8]) {
  const int16x8_t z = vdupq_n_s16(0);
  acc[0] = acc[1] = acc[2] = acc[3] = acc[4] = acc[5] = acc[6] = acc[7] = z;
}
inline void zero(int32x4_t comb[16]) {
  for (int i = 0; i < 16; ++i) comb[i] = vdupq_n_s32(0);
}

// Decode: one token at a time, splitting nibbles straight from the codes.
void lut_gemv_neon(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                   int64_t t1) {
  const QTypeTraits& tr = qtype_traits(w.shape.qtype);
  const TileWalk tw(w.shape);
  const GroupFinish finish(w.shape);
  for (int64_t tok = 0; tok < m; ++tok) {
    const ActTables& a = acts[tok];
    for (int64_t t = t0; t < t1; ++t) {
      alignas(16) float out[kTileRows] = {0};
      SuperAcc sa;
      for (int64_t g = 0; g < tw.ng; ++g) {
        const uint8_t* codes = tw.codes(w, t, g);
        const int8_t* tab = a.tab + g * tw.cpg * kTableSize;
        int32x4_t comb[16];
        zero(comb);
        for (int p = 0; p < tw.planes; ++p) {
          int16x8_t acc[8];
          zero(acc);
          for (int64_t c = 0; c < tw.cpg; ++c)
            lookup_add(vld1q_s8(tab + c * kTableSize), split_run(codes + (c * tw.planes + p) * 32), acc);
          combine_plane(acc, static_cast<int16_t>(tr.icoef[p]), comb);
        }
        finish(comb, group_meta(w, t, g), g, a.tscale[g], a.asum[g], sa, out);
      }
      store_tile(w.shape, t, out, y + tok * ldy);
    }
  }
}

// Prefill: per (tile, group) the codes are split into index vectors once and
// reused by every token of a block of kTokenBlock tokens.
void lut_gemm_neon(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                   int64_t t1) {
  const QTypeTraits& tr = qtype_traits(w.shape.qtype);
  const TileWalk tw(w.shape);
  RunIdx idx[kMaxRunsPerGroup];  // (cpg, planes) split runs of the current group
  alignas(16) float out[kTokenBlock][kTileRows];
  SuperAcc sa[kTokenBlock];  // flushed (zeroed) after each super-block's last group
  const GroupFinish finish(w.shape);
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t b0 = 0; b0 < m; b0 += kTokenBlock) {
      const int64_t nb = std::min<int64_t>(kTokenBlock, m - b0);
      std::memset(out, 0, sizeof out);
      for (int64_t g = 0; g < tw.ng; ++g) {
        const uint8_t* codes = tw.codes(w, t, g);
        for (int64_t r = 0; r < tw.cpg * tw.planes; ++r) idx[r] = split_run(codes + r * 32);
        const GroupMeta e = group_meta(w, t, g);
        for (int64_t b = 0; b < nb; ++b) {
          const ActTables& a = acts[b0 + b];
          const int8_t* tab = a.tab + g * tw.cpg * kTableSize;
          int32x4_t comb[16];
          zero(comb);
          for (int p = 0; p < tw.planes; ++p) {
            int16x8_t acc[8];
            zero(acc);
            for (int64_t c = 0; c < tw.cpg; ++c)
              lookup_add(vld1q_s8(tab + c * kTableSize), idx[c * tw.planes + p], acc);
            combine_plane(acc, static_cast<int16_t>(tr.icoef[p]), comb);
          }
          finish(comb, e, g, a.tscale[g], a.asum[g], sa[b], out[b]);
        }
      }
      for (int64_t b = 0; b < nb; ++b) store_tile(w.shape, t, out[b], y + (b0 + b) * ldy);
    }
  }
}

}  // namespace

const KernelSet& kernels_neon() {
  static const KernelSet k{lut_gemv_neon, lut_gemm_neon};
  return k;
}

}  // namespace edgelut
