// AVX-512 LUT kernel (placeholder delegating to the reference until the SIMD
// kernel lands in this same session; see lut_ref.cc for the contract).
#include "dispatch.h"

namespace edgelut {
const KernelSet& kernels_avx512() {
  static const KernelSet k{lut_gemm_ref, lut_gemm_ref};
  return k;
}
}  // namespace edgelut
