// The walk every matmul kernel makes over a packed matrix (layout.h): row
// tiles of 64 outputs, then the groups of K, then chunks of 4 activations.
// The scalar kernels (lut_ref, int8_ref) and the NEON ones share these pieces,
// so the index arithmetic of the layout is written once.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fp16.h"
#include "layout.h"

namespace edgelut {

struct TileWalk {
  explicit TileWalk(const PackedShape& s)
      : planes(s.planes()), ng(s.groups()), cpg(s.group / kChunk), gbytes(s.group_code_bytes()) {}

  int planes;      // bit planes per code
  int64_t ng;      // groups per row
  int64_t cpg;     // 4-activation chunks per group
  size_t gbytes;   // code bytes of one (tile, group)

  // Codes of (tile t, group g): [cpg][planes][32] bytes.
  const uint8_t* codes(const PackedView& w, int64_t t, int64_t g) const {
    return w.codes + static_cast<size_t>(t * ng + g) * gbytes;
  }
};

// The 4-bit lookup index of tile row r in one 32-byte run of codes.
inline int run_index(const uint8_t* run, int r) {
  const uint8_t byte = run[r % 32];
  return r < 32 ? (byte & 0x0f) : (byte >> 4);
}

// Copies a tile's outputs into the output row, without the padding rows past N.
inline void store_tile(const PackedShape& s, int64_t t, const float* out, float* yrow) {
  const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
  std::memcpy(yrow + t * kTileRows, out, static_cast<size_t>(rows) * sizeof(float));
}

// out[r] += one group's contribution, given v[r] = (integer dot) * half activation scale.
// This op order is the contract every SIMD epilogue reproduces exactly (lut.h);
// row_scale/row_min (layout.h) give the same floats for either scale format.
inline void add_group_ref(const GroupMeta& m, float center, const float* v, float asum, float* out) {
  for (int r = 0; r < kTileRows; ++r) {
    const float sc = row_scale(m, r);
    if (m.has_min()) {
      out[r] = std::fma(sc, std::fma(center, asum, v[r]), out[r]);
      out[r] = std::fma(row_min(m, r), asum, out[r]);
    } else {
      out[r] = std::fma(sc, v[r], out[r]);
    }
  }
}

// Per-row integer sums of one super-block on lut.h's integer sub-scale path,
// in the contract's exact order; the scalar and NEON kernels share it.
struct SuperAcc {
  int32_t s[kTileRows] = {0};
  int32_t m[kTileRows] = {0};

  // One group: comb (64 rows), csum = sum icoef, aq = asum_steps of the group.
  void add_group(const GroupMeta& meta, const int32_t* comb, int32_t csum, int32_t aq) {
    const int32_t k = csum * aq;
    for (int r = 0; r < kTileRows; ++r) {
      s[r] += static_cast<int32_t>(meta.sub[r] & 15u) * (comb[r] + k);
      m[r] += static_cast<int32_t>(meta.sub[r] >> 4) * aq;
    }
  }

  // After group g of a row of ng groups, gps per super-block: flushes when g
  // ends a super-block (the last one may be partial).
  void end_group(int64_t g, int64_t gps, int64_t ng, const GroupMeta& meta, float tscale, float* out) {
    if (g % gps == gps - 1 || g == ng - 1) flush(meta, tscale, out);
  }

  // Adds the super-block to out and starts the next one.
  void flush(const GroupMeta& meta, float tscale, float* out) {
    const float half_ts = 0.5f * tscale;
    for (int r = 0; r < kTileRows; ++r) {
      out[r] = std::fma(fp16_to_fp32(meta.d[r]), static_cast<float>(s[r]) * half_ts, out[r]);
      out[r] = std::fma(fp16_to_fp32(meta.dmin[r]), static_cast<float>(m[r]) * tscale, out[r]);
      s[r] = m[r] = 0;
    }
  }
};

}  // namespace edgelut
