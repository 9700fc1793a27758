// The outer layer of the LUT matmul: checks shapes, builds the activation
// tables, dispatches to the ISA kernel and splits row tiles across threads.
#pragma once
#include <cstdint>

#include "cpu_isa.h"
#include "layout.h"

namespace edgelut {

class ThreadPool;

// y (m x n, row stride ldy) = x (m x k, row stride ldx) . W^T.
// int8 = true selects the int8 prefill path (lut.h) where the ISA has one
// (scalar reference, avx512) and the LUT path elsewhere.
// Throws std::invalid_argument on bad shapes.
void lut_matmul(const PackedView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, CpuIsa isa,
                ThreadPool& pool, bool int8 = false);

}  // namespace edgelut
