// Scalar reference of the int8 prefill path (lut.h, "Int8 prefill path"): the
// oracle the VNNI kernel is tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "fp16.h"
#include "lut.h"

namespace edgelut {

void quantize_acts_int8(const PackedShape& s, const float* x, uint8_t* xu, float* xscale, float* asum) {
  const int64_t ng = s.groups();
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t base = g * s.group;
    float amax = 0.0f, sum = 0.0f;
    for (int64_t i = 0; i < s.group; ++i) {
      const float a = base + i < s.k ? x[base + i] : 0.0f;
      amax = std::max(amax, std::fabs(a));
      sum += a;
    }
    asum[g] = sum;
    xscale[g] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t i = 0; i < s.group; ++i) {
      const float a = base + i < s.k ? x[base + i] : 0.0f;
      const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(a * inv)));
      xu[base + i] = static_cast<uint8_t>(static_cast<int>(q) + 128);
    }
  }
}

void int8_gemm_ref(const PackedView& w, const Int8Acts* acts, int64_t m, float* y, int64_t ldy, int64_t t0,
                   int64_t t1) {
  const PackedShape& s = w.shape;
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int planes = tr.planes;
  const int64_t ng = s.groups();
  const int64_t cpg = s.group / kChunk;
  const size_t gbytes = s.group_code_bytes();
  for (int64_t tok = 0; tok < m; ++tok) {
    const Int8Acts& a = acts[tok];
    for (int64_t t = t0; t < t1; ++t) {
      float out[kTileRows] = {0};
      for (int64_t g = 0; g < ng; ++g) {
        const uint8_t* codes = w.codes + static_cast<size_t>(t * ng + g) * gbytes;
        const uint8_t* xu = a.xu + g * s.group;
        const float half_xs = 0.5f * a.xscale[g];
        const float as = a.asum[g];
        const size_t si = static_cast<size_t>(t * ng + g) * kTileRows;
        for (int r = 0; r < kTileRows; ++r) {
          int32_t dot = 0;
          for (int64_t c = 0; c < cpg; ++c) {
            for (int j = 0; j < kChunk; ++j) {
              int32_t w8 = 0;  // 2 * (level - center) = sum_p icoef[p] * (+1 if bit set else -1)
              for (int p = 0; p < planes; ++p) {
                const uint8_t byte = codes[(c * planes + p) * 32 + (r % 32)];
                const int idx = r < 32 ? (byte & 0x0f) : (byte >> 4);
                w8 += (idx >> j) & 1 ? tr.icoef[p] : -tr.icoef[p];
              }
              dot += w8 * (static_cast<int32_t>(xu[c * kChunk + j]) - 128);
            }
          }
          const float v = static_cast<float>(dot) * half_xs;
          const float sc = fp16_to_fp32(w.scales[si + r]);
          if (w.mins) {
            out[r] = std::fma(sc, std::fma(tr.center, as, v), out[r]);
            out[r] = std::fma(fp16_to_fp32(w.mins[si + r]), as, out[r]);
          } else {
            out[r] = std::fma(sc, v, out[r]);
          }
        }
      }
      const int64_t rows = std::min<int64_t>(kTileRows, s.n - t * kTileRows);
      std::memcpy(y + tok * ldy + t * kTileRows, out, static_cast<size_t>(rows) * sizeof(float));
    }
  }
}

}  // namespace edgelut
