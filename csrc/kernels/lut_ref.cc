// Scalar reference of the LUT kernel (lut.h): the oracle every SIMD kernel is
// tested against, and the portable fallback.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "fp16.h"
#include "lut.h"
#include "tile_walk.h"

namespace edgelut {

void build_tables(const PackedShape& s, const float* x, int8_t* tab, float* tscale, float* asum) {
  build_tables_groups_ref(s, x, 0, s.groups(), tab, tscale, asum);
}

void build_tables_groups_ref(const PackedShape& s, const float* x, int64_t g0, int64_t g1, int8_t* tab,
                             float* tscale, float* asum) {
  const int64_t cpg = s.group / kChunk;
  const int64_t gpt = s.groups_per_table();
  const auto at = [&](int64_t col) { return col < s.k ? x[col] : 0.0f; };
  float t[kTableSize];
  for (int64_t b0 = g0; b0 < g1; b0 += gpt) {
    const int64_t b1 = std::min(g1, b0 + gpt);
    float maxabs = 0.0f;
    for (int64_t g = b0; g < b1; ++g) {
      float sum = 0.0f;
      for (int64_t c = 0; c < cpg; ++c) {
        float l1 = 0.0f;
        for (int j = 0; j < kChunk; ++j) {
          const float a = at(g * s.group + c * kChunk + j);
          l1 += std::fabs(a);
          sum += a;
        }
        maxabs = std::max(maxabs, l1);
      }
      asum[g] = sum;
    }
    const float inv = maxabs > 0.0f ? 127.0f / maxabs : 0.0f;
    for (int64_t g = b0; g < b1; ++g) {
      tscale[g] = maxabs / 127.0f;
      for (int64_t c = 0; c < cpg; ++c) {
        float a[kChunk];
        for (int j = 0; j < kChunk; ++j) a[j] = at(g * s.group + c * kChunk + j);
        // Mirror symmetry: build the 8 entries with bit 3 set, negate for the rest.
        for (int idx = 0; idx < 8; ++idx) {
          const float p = ((idx & 1 ? a[0] : -a[0]) + (idx & 2 ? a[1] : -a[1])) + (idx & 4 ? a[2] : -a[2]);
          t[idx | 8] = p + a[3];
        }
        int8_t* out = tab + (g * cpg + c) * kTableSize;
        for (int idx = 0; idx < 8; ++idx) {
          const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(t[idx | 8] * inv)));
          out[idx | 8] = static_cast<int8_t>(q);
          out[7 - idx] = static_cast<int8_t>(-q);
        }
      }
    }
  }
}

void lut_gemm_ref(const PackedView& w, const ActTables* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                  int64_t t1) {
  const QTypeTraits& tr = qtype_traits(w.shape.qtype);
  const TileWalk tw(w.shape);
  const bool int_path = w.shape.int_subscales();
  const int64_t gps = w.shape.groups_per_super();
  const int32_t csum = icoef_sum(tr);
  for (int64_t tok = 0; tok < m; ++tok) {
    const ActTables& a = acts[tok];
    for (int64_t t = t0; t < t1; ++t) {
      float out[kTileRows] = {0};
      SuperAcc sa;
      for (int64_t g = 0; g < tw.ng; ++g) {
        const uint8_t* codes = tw.codes(w, t, g);
        const int8_t* tab = a.tab + g * tw.cpg * kTableSize;
        int32_t comb[kTileRows] = {0};
        for (int p = 0; p < tw.planes; ++p) {
          for (int r = 0; r < kTileRows; ++r) {
            int32_t acc = 0;
            for (int64_t c = 0; c < tw.cpg; ++c)
              acc += tab[c * kTableSize + run_index(codes + (c * tw.planes + p) * 32, r)];
            comb[r] += tr.icoef[p] * acc;
          }
        }
        const GroupMeta meta = group_meta(w, t, g);
        if (int_path) {
          sa.add_group(meta, comb, csum, asum_steps(a.asum[g], a.tscale[g]));
          sa.end_group(g, gps, tw.ng, meta, a.tscale[g], out);
          continue;
        }
        float v[kTileRows];
        const float half_ts = 0.5f * a.tscale[g];
        for (int r = 0; r < kTileRows; ++r) v[r] = static_cast<float>(comb[r]) * half_ts;
        add_group_ref(meta, tr.center, v, a.asum[g], out);
      }
      store_tile(w.shape, t, out, y + tok * ldy);
    }
  }
}

}  // namespace edgelut
