// LUT mpGEMV/mpGEMM: the kernel interface shared by every ISA.
//
// Per token, the activations are turned into lookup tables once:
//   tab[c][idx] = round(T_c[idx] / tscale[g]),  T_c[idx] = sum_j (bit j of idx ? +x : -x)[4c + j]
// with one int8 scale per weight group g (tscale[g] = max_c sum_j |x[4c+j]| / 127),
// and asum[g] = sum of x over group g (needed by asymmetric weights).
//
// For each (row, group) the kernel accumulates, per plane p, the int8 entries
// selected by the row's 4-bit indices (int16 is enough: at most 32 chunks of
// |127|), combines planes as comb = sum_p icoef[p] * acc_p, and adds to y:
//   v = float(comb) * (0.5f * tscale[g])
//   symmetric:  y = fma(s, v, y)
//   asymmetric: y = fma(m, asum[g], fma(s, fma(center, asum[g], v), y))
// Every kernel follows this exact order, so results match the scalar reference
// to the last bit for the same tables.
//
// Error bound of the int8 tables (the only approximation): each looked-up entry
// is off by at most tscale[g]/2, so per (row, group)
//   |y_lut - y_exact| <= |s| * 0.5 * tscale[g] * 0.5 * sum_p |icoef[p]| * (G/4).
//
// Integer sub-scale path (two-level shapes with PackedShape::int_subscales()).
// The per-group float epilogue above costs as much as the lookups of a q3
// GEMV, so these shapes take the K-quants' dot-product structure instead:
// the groups of a super-block share one table scale (tscale[g] is the max over
// the super-block's chunks / 127, stored for each of its groups), and per
// (row, super-block), exactly in integers,
//   aq[g] = nearbyint(asum[g] / tscale[g])   (0 when tscale[g] is 0)
//   accs  = sum_g ls[g] * (comb[g] + csum * aq[g])   (csum = sum_p icoef[p] = 2 * center)
//   accm  = sum_g lm[g] * aq[g]
// then, once per super-block, with d and dmin the row's fp16 values as float:
//   y = fma(d, float(accs) * (0.5f * tscale), y);  y = fma(dmin, float(accm) * tscale, y)
// comb + csum * aq fits int16 and accs, accm stay below 2^24 (int_subscales()
// checks both), so every kernel gets the same bits. Rounding asum adds, per
// (row, group), (|s| * center + |m|) * tscale / 2 to the table bound above,
// which is taken with the super-block's tscale.
#pragma once
#include <cmath>
#include <cstdint>

#include "layout.h"

namespace edgelut {

struct ActTables {
  const int8_t* tab = nullptr;    // (k_padded/4, 16)
  const float* tscale = nullptr;  // (groups)
  const float* asum = nullptr;    // (groups)
};

// Sizes of the table buffers for one token.
inline size_t table_bytes(const PackedShape& s) { return static_cast<size_t>(s.k_padded() / kChunk) * kTableSize; }

// x has s.k floats; the tail to k_padded is treated as zeros. One table scale
// covers s.table_group() weights (the group, or the super-block on the integer
// sub-scale path); tscale still has one entry per group.
// The scalar reference; SIMD builders (KernelSet::tables) are bit-identical to it.
void build_tables(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum);

// The reference for groups [g0, g1) only (tab, tscale, asum point at group 0),
// g0 on a table-scale boundary: the SIMD builders use it for a last table
// block that runs past K.
void build_tables_groups_ref(const PackedShape& s, const float* x, int64_t g0, int64_t g1, int8_t* tab,
                             float* tscale, float* asum);

// The pieces of lut.h's integer sub-scale path that every kernel computes the
// same way. In an anonymous namespace for the reason given in layout.h.
namespace {
// aq: the group's activation sum in steps of the table scale.
inline int32_t asum_steps(float asum, float tscale) {
  return tscale > 0.0f ? static_cast<int32_t>(std::nearbyint(asum / tscale)) : 0;
}
// sum_p icoef[p]: the plane combination of an all-ones code, 2 * center.
inline int32_t icoef_sum(const QTypeTraits& tr) {
  int32_t s = 0;
  for (int p = 0; p < tr.planes; ++p) s += tr.icoef[p];
  return s;
}
}  // namespace

using BuildTablesFn = void (*)(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum);

// Computes rows of tiles [t0, t1) for M tokens: Y[m * ldy + row] for row < N.
// acts points to M table sets. Kernels trust their inputs.
using LutGemmFn = void (*)(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy,
                           int64_t t0, int64_t t1);

void lut_gemm_ref(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                  int64_t t1);


// ---------------------------------------------------------------------------
// Int8 prefill path (optional per ISA: KernelSet::gemm_int8; approximate in a
// different way than the LUT path, so it never replaces it silently).
//
// Activations are quantised per token and weight group, symmetrically:
//   xscale[g] = amax / 127 (amax = max |x| over the group),
//   xq = clamp(nearbyint(x * (127 / amax)), -127, 127),
// stored biased as xu = xq + 128 (uint8, for unsigned x signed dot products).
// Weights are expanded to w8 = 2 * (level - center) (odd integers in [-15, 15]
// for b-bit types, {-2, 0, 2} for ternary). Per (row, group), exactly in int32:
//   dot = sum_k w8 * xq
// then v = float(dot) * (0.5f * xscale[g]) and the same float epilogue as the
// LUT path (asum[g] is the float sum of x over the group, as for the tables).
//
// Error bound (activation rounding is the only approximation, |x - xq * xscale|
// <= xscale / 2 per element), per (row, group):
//   |y_int8 - y_exact| <= |s| * 0.5 * xscale[g] * sum_k |level_k - center|
//                      <= |s| * 0.5 * xscale[g] * G * max|level - center|.
// For q4 that is the same worst case as the table bound (both are
// 3.75 * |s| * amax/127 * G when every chunk's L1 norm equals 4 * amax).
struct Int8Acts {
  const uint8_t* xu = nullptr;      // (k_padded) biased int8 activations
  const float* xscale = nullptr;    // (groups)
  const float* asum = nullptr;      // (groups)
};

// x has s.k floats; the tail to k_padded is treated as zeros (xu = 128).
void quantize_acts_int8(const PackedShape& s, const float* x, uint8_t* xu, float* xscale, float* asum);

using Int8GemmFn = void (*)(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy,
                            int64_t t0, int64_t t1);

void int8_gemm_ref(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                   int64_t t1);

}  // namespace edgelut
