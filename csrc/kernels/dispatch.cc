#include "dispatch.h"

#include <stdexcept>
#include <string>

namespace edgelut {

const KernelSet& kernels_scalar() {
  static const KernelSet k{lut_gemm_ref, lut_gemm_ref, int8_gemm_ref};
  return k;
}

const KernelSet& kernels_for(CpuIsa isa) {
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("this CPU does not support the ") + isa_name(isa) + " kernels");
  switch (isa) {
    case CpuIsa::kScalar: return kernels_scalar();
#if defined(__x86_64__)
    case CpuIsa::kAvx2: return kernels_avx2();
    case CpuIsa::kAvx512: return kernels_avx512();
#elif defined(__aarch64__)
    case CpuIsa::kNeon: return kernels_neon();
#endif
    default: break;
  }
  throw std::runtime_error(std::string("this build has no ") + isa_name(isa) + " kernels");
}

}  // namespace edgelut
