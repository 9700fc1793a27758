// AVX2 + FMA gated FFN activations (contract and scalar oracles in ops.h /
// ops.cc). The scalar loops call libm's exp/tanh once per element, which is
// most of the elementwise time of a prefill on a wide FFN (Gemma 3's GeGLU:
// tanh per element); these take eight lanes per instruction.
#include <immintrin.h>

#include <cmath>

#include "avx2_math.h"
#include "ops.h"

namespace edgelut {

void swiglu_avx2(float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));  // exp(-g)
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  swiglu_ref(gate + i, up + i, n - i);
}

void geglu_avx2(float* gate, const float* up, int64_t n) {
  // gelu_tanh(g) = 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3), and
  // 1 + tanh(u) = 2 - 2 / (exp(2u) + 1): one exp and one division per lane.
  const __m256 c0 = _mm256_set1_ps(2.0f * 0.7978845608028654f);
  const __m256 c1 = _mm256_set1_ps(0.044715f);
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f), half = _mm256_set1_ps(0.5f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    const __m256 two_u = _mm256_mul_ps(c0, _mm256_fmadd_ps(c1, g3, g));
    const __m256 one_plus_tanh = _mm256_sub_ps(two, _mm256_div_ps(two, _mm256_add_ps(exp256(two_u), one)));
    const __m256 gelu = _mm256_mul_ps(_mm256_mul_ps(half, g), one_plus_tanh);
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(gelu, _mm256_loadu_ps(up + i)));
  }
  geglu_ref(gate + i, up + i, n - i);
}

}  // namespace edgelut
