// The one dispatch point from an ISA to its kernels.
#pragma once
#include "cpu_isa.h"
#include "lut.h"

namespace edgelut {

struct KernelSet {
  LutGemmFn gemv;  // m == 1 (decode)
  LutGemmFn gemm;  // m > 1 (prefill)
  // Optional int8 prefill (lut.h, "Int8 prefill path"); nullptr where absent.
  Int8GemmFn gemm_int8 = nullptr;
  // Activation tables (lut.h); nullptr = the scalar reference build_tables.
  BuildTablesFn tables = nullptr;
};

// Throws std::runtime_error when the CPU or this build lacks the ISA.
const KernelSet& kernels_for(CpuIsa isa);

// Per-ISA kernel sets; each lives in its own source file compiled with that
// ISA's flags. Declared here, defined only where the architecture builds them.
const KernelSet& kernels_scalar();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
const KernelSet& kernels_neon();

}  // namespace edgelut
