// The loops shared by the x86 LUT kernels (lut_avx2.cc, lut_avx512.cc).
//
// Only ISA-neutral code lives here; each kernel file includes it and supplies
// an `Isa` policy with the SIMD parts. Everything is in an anonymous namespace
// so each file gets its own copy compiled with its own flags (a shared inline
// function could otherwise be linked to the AVX-512 copy and run on an
// AVX2-only CPU).
//
// How the kernels stay exact with int16 accumulators (see lut.h for the math):
// - The tables are copied once per call with 0x80 xored into every byte, so a
//   looked-up entry e becomes the unsigned byte u = e + 128.
// - Adding the 64 looked-up bytes of a plane as 32 int16 words gives, per word,
//   sum(u_odd) * 256 + sum(u_even) (mod 2^16); a logical shift by 8 gives the
//   odd rows alone, exactly (<= 32 * 255). Two adds and a shift per 32 bytes.
// - Planes are combined with icoef while still int16 (ring arithmetic mod
//   2^16), the bias 128 * chunks * sum(icoef) is removed, and the result is
//   exact because the true per-row value fits int16: a block holds at most
//   32767 / (127 * sum|icoef|) chunks (all 32 chunks of a 128-group except
//   for q4, which takes two blocks).
// - Only then are rows put back in order and widened to int32, once per block.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "lut.h"

namespace edgelut {
namespace {

// What a (tile, group, token block) step needs besides the codes.
struct GroupCtx {
  int64_t cpg = 0;       // chunks per group
  int64_t block = 0;     // chunks per exact int16 block
  int32_t icoef[4] = {};
  int32_t csum = 0;      // sum of icoef (the bias multiplier)
  float center = 0.0f;
};

inline GroupCtx make_ctx(const PackedShape& s) {
  const QTypeTraits& tr = qtype_traits(s.qtype);
  GroupCtx cx;
  cx.cpg = s.group / kChunk;
  int32_t sumabs = 0;
  for (int p = 0; p < tr.planes; ++p) {
    cx.icoef[p] = tr.icoef[p];
    cx.csum += tr.icoef[p];
    sumabs += std::abs(tr.icoef[p]);
  }
  cx.block = std::min<int64_t>(cx.cpg, 32767 / (127 * sumabs));
  cx.center = tr.center;
  return cx;
}

// The int16 bias to remove from a block of nc chunks, wrapped like the sums.
inline int16_t block_bias(const GroupCtx& cx, int64_t nc) {
  return static_cast<int16_t>(static_cast<uint16_t>(static_cast<uint32_t>(128 * nc * cx.csum) & 0xffffu));
}

// Per-thread scratch: the biased tables of every token and the float output of
// one tile for every token.
struct X86Scratch {
  std::vector<int8_t> tab;
  std::vector<float> out;
  std::vector<int32_t> aq;  // integer sub-scale path: asum_steps per (token, group)
};

inline X86Scratch& x86_scratch() {
  thread_local X86Scratch s;
  return s;
}

// Software prefetch of the code stream, issued by the kernels' chunk loops.
// Decode streams the codes from DRAM once per token, and the lookups are dense
// enough that the out-of-order window holds only a dozen lines ahead, which the
// hardware prefetcher does not cover: q2-q4 GEMVs of 8960 x 1536 and
// 1536 x 8960 streamed from DRAM ran 1.10-1.28x faster with this on the AMD
// EPYC (Zen 3) VM, and 1.03-1.11x from L3 (docs/BENCHMARKS.md, "Kernels from
// DRAM"). One or two prefetches per chunk, spread through the loop, cover
// every 64-byte line of the P * 32 bytes a chunk reads; a burst of a whole
// group's lines per group measured no faster than none, and prefetching the
// scale streams as well gained nothing.
constexpr size_t kCodePrefetchBytes = 4096;

template <int P>
inline void prefetch_chunk_codes(const uint8_t* run) {
  _mm_prefetch(reinterpret_cast<const char*>(run + kCodePrefetchBytes), _MM_HINT_T0);
  if constexpr (P * 32 > 64) _mm_prefetch(reinterpret_cast<const char*>(run + kCodePrefetchBytes + 64), _MM_HINT_T0);
}

// One step: rows of tile-group `codes` for TB tokens.
struct StepArgs {
  const uint8_t* codes;     // this (tile, group)
  bool prefetch;            // the first token block of this (tile, group): prefetch the codes ahead
  GroupMeta meta;           // the 64 rows' scales and offsets (either format)
  const int8_t* tab[8];     // biased tables of each token, at this group
  float half_ts[8];         // 0.5f * tscale[g] per token
  float asum[8];            // asum[g] per token
  float* out[8];            // 64 floats per token
};

// One step of lut.h's integer sub-scale path: a (tile, super-block) for TB tokens.
struct SuperArgs {
  const uint8_t* codes;     // the super-block's first group; groups follow gbytes apart
  size_t gbytes;
  int ngroups;              // groups in this super-block (the last may be partial)
  bool prefetch;            // the first token block: prefetch the codes ahead
  GroupMeta meta;           // of the first group: sub advances kTileRows bytes per group
  const int8_t* tab[8];     // biased tables of each token, at the first group
  const int32_t* aq[8];     // asum_steps per group of the super-block, per token
  float ts[8];              // the super-block's table scale per token
  float* out[8];            // 64 floats per token
};

// Isa provides:
//   static void bias_tables(const int8_t* src, int8_t* dst, size_t bytes);  (bytes % 64 == 0)
//   template <int P, int TB> static void step(const GroupCtx&, const StepArgs&);
//   template <int P, int TB> static void step_super(const GroupCtx&, const SuperArgs&);
//   static constexpr int kTokBlock;
// lut_gemm_planes' walk with a super-block as the unit of work. The two walks
// are kept apart on purpose: one walk shared through lambdas (a token-block
// helper taking the step as a generic lambda) compiled the AVX2 step worse,
// and the q3 GEMV's gain over the float path fell from 1.25-1.36x to
// 1.03-1.05x in cache.
template <class Isa, int P>
void lut_gemm_supers(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                     int64_t t1) {
  const PackedShape& s = w.shape;
  const GroupCtx cx = make_ctx(s);
  const int64_t ng = s.groups(), gps = s.groups_per_super();
  const size_t tbytes = table_bytes(s);
  const size_t gbytes = s.group_code_bytes();
  X86Scratch& sc = x86_scratch();
  sc.tab.resize(tbytes * static_cast<size_t>(m));
  sc.aq.resize(static_cast<size_t>(m * ng));
  for (int64_t j = 0; j < m; ++j) {
    Isa::bias_tables(acts[j].tab, sc.tab.data() + tbytes * j, tbytes);
    for (int64_t g = 0; g < ng; ++g) sc.aq[j * ng + g] = asum_steps(acts[j].asum[g], acts[j].tscale[g]);
  }
  sc.out.resize(static_cast<size_t>(m) * kTileRows);
  float* out = sc.out.data();

  for (int64_t t = t0; t < t1; ++t) {
    std::fill(sc.out.begin(), sc.out.end(), 0.0f);
    for (int64_t g0 = 0; g0 < ng; g0 += gps) {
      SuperArgs a;
      a.codes = w.codes + static_cast<size_t>(t * ng + g0) * gbytes;
      a.gbytes = gbytes;
      a.ngroups = static_cast<int>(std::min(gps, ng - g0));
      a.meta = group_meta(w, t, g0);
      for (int64_t j0 = 0; j0 < m; j0 += Isa::kTokBlock) {
        const int nb = static_cast<int>(std::min<int64_t>(Isa::kTokBlock, m - j0));
        a.prefetch = j0 == 0;
        for (int i = 0; i < nb; ++i) {
          const int64_t j = j0 + i;
          a.tab[i] = sc.tab.data() + tbytes * j + static_cast<size_t>(g0 * cx.cpg * kTableSize);
          a.aq[i] = sc.aq.data() + j * ng + g0;
          a.ts[i] = acts[j].tscale[g0];
          a.out[i] = out + j * kTileRows;
        }
        switch (nb) {
          case 1: Isa::template step_super<P, 1>(cx, a); break;
          case 2: Isa::template step_super<P, 2>(cx, a); break;
          case 3: Isa::template step_super<P, 3>(cx, a); break;
          default: Isa::template step_super<P, 4>(cx, a); break;
        }
      }
    }
    const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
    for (int64_t j = 0; j < m; ++j)
      std::memcpy(y + j * ldy + t * kTileRows, out + j * kTileRows, static_cast<size_t>(rows) * sizeof(float));
  }
}

template <class Isa, int P>
void lut_gemm_planes(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                     int64_t t1) {
  const PackedShape& s = w.shape;
  if (s.int_subscales()) {
    lut_gemm_supers<Isa, P>(w, acts, m, y, ldy, t0, t1);
    return;
  }
  const GroupCtx cx = make_ctx(s);
  const int64_t ng = s.groups();
  const size_t tbytes = table_bytes(s);
  const size_t gbytes = s.group_code_bytes();
  X86Scratch& sc = x86_scratch();
  sc.tab.resize(tbytes * static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) Isa::bias_tables(acts[j].tab, sc.tab.data() + tbytes * j, tbytes);
  sc.out.resize(static_cast<size_t>(m) * kTileRows);
  float* out = sc.out.data();

  for (int64_t t = t0; t < t1; ++t) {
    std::fill(sc.out.begin(), sc.out.end(), 0.0f);
    for (int64_t g = 0; g < ng; ++g) {
      const size_t tg = static_cast<size_t>(t * ng + g);
      StepArgs a;
      a.codes = w.codes + tg * gbytes;
      a.meta = group_meta(w, t, g);
      for (int64_t j0 = 0; j0 < m; j0 += Isa::kTokBlock) {
        const int nb = static_cast<int>(std::min<int64_t>(Isa::kTokBlock, m - j0));
        a.prefetch = j0 == 0;
        for (int i = 0; i < nb; ++i) {
          const int64_t j = j0 + i;
          a.tab[i] = sc.tab.data() + tbytes * j + static_cast<size_t>(g * cx.cpg * kTableSize);
          a.half_ts[i] = 0.5f * acts[j].tscale[g];
          a.asum[i] = acts[j].asum[g];
          a.out[i] = out + j * kTileRows;
        }
        switch (nb) {
          case 1: Isa::template step<P, 1>(cx, a); break;
          case 2: Isa::template step<P, 2>(cx, a); break;
          case 3: Isa::template step<P, 3>(cx, a); break;
          default: Isa::template step<P, 4>(cx, a); break;
        }
      }
    }
    const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
    for (int64_t j = 0; j < m; ++j)
      std::memcpy(y + j * ldy + t * kTileRows, out + j * kTileRows, static_cast<size_t>(rows) * sizeof(float));
  }
}

template <class Isa>
void lut_gemm_x86(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                  int64_t t1) {
  switch (w.shape.planes()) {
    case 1: lut_gemm_planes<Isa, 1>(w, acts, m, y, ldy, t0, t1); break;
    case 2: lut_gemm_planes<Isa, 2>(w, acts, m, y, ldy, t0, t1); break;
    case 3: lut_gemm_planes<Isa, 3>(w, acts, m, y, ldy, t0, t1); break;
    default: lut_gemm_planes<Isa, 4>(w, acts, m, y, ldy, t0, t1); break;
  }
}

// The SIMD table builders' walk over table blocks (lut.h): blocks that lie
// entirely inside K, each group's chunk-L1 maximum first (max_l1(xg)), then
// the block's scale, then each group's entries (build(xg, inv, out)). The
// group sums stay serial, in column order, as in the reference; a last block
// that runs past K is left to the reference.
template <class MaxL1, class Build>
void build_tables_x86(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum,
                      const MaxL1& max_l1, const Build& build) {
  const int64_t ng = s.groups(), G = s.group, cpg = G / kChunk, gpt = s.groups_per_table();
  const int64_t full = s.k / s.table_group() * gpt;  // groups of the blocks inside K
  for (int64_t b0 = 0; b0 < full; b0 += gpt) {
    float maxabs = 0.0f;
    for (int64_t g = b0; g < b0 + gpt; ++g) {
      const float* xg = x + g * G;
      maxabs = std::max(maxabs, max_l1(xg));
      float sum = 0.0f;
      for (int64_t i = 0; i < G; ++i) sum += xg[i];
      asum[g] = sum;
    }
    const float inv = maxabs > 0.0f ? 127.0f / maxabs : 0.0f;
    for (int64_t g = b0; g < b0 + gpt; ++g) {
      tscale[g] = maxabs / 127.0f;
      build(x + g * G, inv, tab + g * cpg * kTableSize);
    }
  }
  if (full < ng) build_tables_groups_ref(s, x, full, ng, tab, tscale, asum);
}

}  // namespace
}  // namespace edgelut
