// Scalar reference of the int8 prefill path (lut.h, "Int8 prefill path"): the
// oracle the SIMD kernels (AVX2, AVX-512 VNNI) are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "fp16.h"
#include "lut.h"
#include "tile_walk.h"

namespace edgelut {

namespace {
// Round half to even like nearbyint in the default rounding mode, without a
// libm call at baseline x86-64 flags (|v| <= 127.x here, far below 2^22):
// adding and subtracting 1.5 * 2^23 leaves the nearest integer.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}
}  // namespace

void quantize_acts_int8(const PackedShape& s, const float* x, uint8_t* xu, float* xscale, float* asum) {
  const int64_t ng = s.groups();
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t base = g * s.group;
    const int64_t len = std::min<int64_t>(s.group, s.k - base);
    const float* xg = x + base;
    // Eight fixed lanes: a deterministic order the compiler can vectorise.
    float mx[8] = {0}, sm[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
      for (int j = 0; j < 8; ++j) {
        mx[j] = std::max(mx[j], std::fabs(xg[i + j]));
        sm[j] += xg[i + j];
      }
    for (; i < len; ++i) {
      mx[0] = std::max(mx[0], std::fabs(xg[i]));
      sm[0] += xg[i];
    }
    float amax = 0.0f;
    for (int j = 0; j < 8; ++j) amax = std::max(amax, mx[j]);
    asum[g] = ((sm[0] + sm[1]) + (sm[2] + sm[3])) + ((sm[4] + sm[5]) + (sm[6] + sm[7]));
    xscale[g] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    uint8_t* out = xu + base;
    for (i = 0; i < len; ++i) {
      const float q = std::min(127.0f, std::max(-127.0f, round_even(xg[i] * inv)));
      out[i] = static_cast<uint8_t>(static_cast<int32_t>(q) + 128);
    }
    for (; i < s.group; ++i) out[i] = 128;
  }
}

void int8_gemm_ref(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                   int64_t t1) {
  const PackedShape& s = w.shape;
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const TileWalk tw(s);
  for (int64_t tok = 0; tok < m; ++tok) {
    const Int8Acts& a = acts[tok];
    for (int64_t t = t0; t < t1; ++t) {
      float out[kTileRows] = {0};
      for (int64_t g = 0; g < tw.ng; ++g) {
        const uint8_t* codes = tw.codes(w, t, g);
        const uint8_t* xu = a.xu + g * s.group;
        const float half_xs = 0.5f * a.xscale[g];
        float v[kTileRows];
        for (int r = 0; r < kTileRows; ++r) {
          int32_t dot = 0;
          for (int64_t c = 0; c < tw.cpg; ++c) {
            for (int j = 0; j < kChunk; ++j) {
              int32_t w8 = 0;  // 2 * (level - center) = sum_p icoef[p] * (+1 if bit set else -1)
              for (int p = 0; p < tw.planes; ++p)
                w8 += (run_index(codes + (c * tw.planes + p) * 32, r) >> j) & 1 ? tr.icoef[p] : -tr.icoef[p];
              dot += w8 * (static_cast<int32_t>(xu[c * kChunk + j]) - 128);
            }
          }
          v[r] = static_cast<float>(dot) * half_xs;
        }
        add_group_ref(group_meta(w, t, g), tr.center, v, a.asum[g], out);
      }
      store_tile(s, t, out, y + tok * ldy);
    }
  }
}

}  // namespace edgelut
