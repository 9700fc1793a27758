// The outer layer of the LUT matmul: checks shapes, builds the activation
// tables, dispatches to the ISA kernel and splits row tiles across threads.
#pragma once
#include <cstdint>
#include <string>

#include "cpu_isa.h"
#include "layout.h"

namespace edgelut {

class ThreadPool;

// Which kernel family runs a matmul. kAuto picks per call from the token count
// and the weight type (int8_path_wins); kLut and kInt8 force one (kInt8 falls
// back to the LUT path where the ISA has no int8 kernel).
enum class MatmulPath { kAuto, kLut, kInt8 };

// "auto", "lut", "int8"; throws std::invalid_argument on anything else ("" = auto).
MatmulPath matmul_path_from_name(const std::string& name);
const char* matmul_path_name(MatmulPath p);

// The kAuto rule: true when the int8 prefill kernel beats the LUT GEMM for m
// tokens of this shape (measured crossover, docs/ARCHITECTURE.md "Choosing the
// prefill kernel"). Never true for m == 1 (decode stays on the LUT GEMV).
bool int8_path_wins(const PackedShape& s, int64_t m);

// y (m x n, row stride ldy) = x (m x k, row stride ldx) . W^T.
// int8 = true selects the int8 prefill path (lut.h) where the ISA has one
// (scalar reference, avx512) and the LUT path elsewhere.
// Throws std::invalid_argument on bad shapes.
void lut_matmul(const PackedView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, CpuIsa isa,
                ThreadPool& pool, bool int8 = false);

// One output of lut_matmul_multi: y (m x w.n, row stride ldy).
struct MatmulOut {
  const PackedView* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Several weights applied to the same input (q/k/v, gate/up). When they share
// K, the group size and the kernel family, the activation tables (or int8 activations)
// are built once and the row tiles of all of them are split across threads in
// one pass (one pool handoff instead of one per weight); otherwise it is one
// lut_matmul per weight. Results are identical to separate calls on the same
// path. prep_seconds, when given, accumulates the time spent building tables.
void lut_matmul_multi(const MatmulOut* outs, int n_out, const float* x, int64_t m, int64_t ldx, CpuIsa isa,
                      ThreadPool& pool, MatmulPath path = MatmulPath::kAuto, double* prep_seconds = nullptr);

}  // namespace edgelut
