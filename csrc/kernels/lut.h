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
#pragma once
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

// x has s.k floats; the tail to k_padded is treated as zeros.
void build_tables(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum);

// Computes rows of tiles [t0, t1) for M tokens: Y[m * ldy + row] for row < N.
// acts points to M table sets. Kernels trust their inputs.
using LutGemmFn = void (*)(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy,
                           int64_t t0, int64_t t1);

void lut_gemm_ref(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                  int64_t t1);

}  // namespace edgelut
