#include "lut_ops.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "../engine/thread_pool.h"
#include "dispatch.h"
#include "lut.h"

namespace edgelut {

namespace {
// Per-thread scratch so decode does not allocate per call.
struct Scratch {
  std::vector<int8_t> tab;
  std::vector<float> tscale, asum;
  std::vector<ActTables> acts;
  std::vector<uint8_t> xu;
  std::vector<Int8Acts> iacts;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Both paths have the same shape: lay out one activation block per token in
// `data`, fill the blocks in parallel over tokens with `prepare`, then run the
// kernel over the row tiles of every output in one parallel pass.
template <typename Acts, typename Elem, typename Prepare, typename Kernel>
void run_blocked(const PackedShape& s, const float* x, int64_t m, int64_t ldx, size_t per_token,
                 std::vector<Elem>& data, std::vector<Acts>& acts, Scratch& sc, ThreadPool& pool,
                 const Prepare& prepare, const MatmulOut* outs, int n_out, double* prep_seconds,
                 const Kernel& kernel) {
  const size_t ng = static_cast<size_t>(s.groups());
  data.resize(per_token * m);
  sc.tscale.resize(ng * m);
  sc.asum.resize(ng * m);
  acts.resize(m);
  for (int64_t i = 0; i < m; ++i)
    acts[i] = Acts{data.data() + per_token * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i};
  const auto t0 = std::chrono::steady_clock::now();
  auto prep = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      prepare(s, x + i * ldx, data.data() + per_token * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i);
  };
  if (m == 1)
    prep(0, 1);  // no pool handoff for a single token
  else
    pool.parallel_for(m, prep);
  if (prep_seconds) *prep_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Acts* ap = acts.data();
  // Global tile index over all outputs, in order.
  int64_t total = 0;
  for (int i = 0; i < n_out; ++i) total += outs[i].w->shape.tiles();
  pool.parallel_for(total, [&](int64_t b, int64_t e) {
    int64_t off = 0;
    for (int i = 0; i < n_out && off < e; ++i) {
      const int64_t nt = outs[i].w->shape.tiles();
      const int64_t t0 = std::max<int64_t>(b, off) - off, t1 = std::min<int64_t>(e, off + nt) - off;
      if (t0 < t1) kernel(outs[i], ap, t0, t1);
      off += nt;
    }
  });
}

void check(const PackedShape& s, int64_t m, int64_t ldx, int64_t ldy) {
  if (m <= 0) throw std::invalid_argument("lut_matmul: need at least one token");
  if (ldx < s.k) throw std::invalid_argument("lut_matmul: input row stride is smaller than K");
  if (ldy < s.n) throw std::invalid_argument("lut_matmul: output row stride is smaller than N");
}

void matmul_same_input(const MatmulOut* outs, int n_out, const float* x, int64_t m, int64_t ldx, CpuIsa isa,
                       ThreadPool& pool, bool int8, double* prep_seconds) {
  const PackedShape& s = outs[0].w->shape;
  const KernelSet& ks = kernels_for(isa);
  Scratch& sc = scratch();
  if (int8 && ks.gemm_int8) {
    const Int8GemmFn fn = ks.gemm_int8;
    run_blocked(s, x, m, ldx, static_cast<size_t>(s.k_padded()), sc.xu, sc.iacts, sc, pool, quantize_acts_int8,
                outs, n_out, prep_seconds, [&](const MatmulOut& o, const Int8Acts* a, int64_t t0, int64_t t1) {
                  fn(*o.w, a, m, o.y, o.ldy, t0, t1);
                });
    return;
  }
  const LutGemmFn fn = m == 1 ? ks.gemv : ks.gemm;
  const BuildTablesFn tables = ks.tables ? ks.tables : build_tables;
  run_blocked(s, x, m, ldx, table_bytes(s), sc.tab, sc.acts, sc, pool, tables, outs, n_out, prep_seconds,
              [&](const MatmulOut& o, const ActTables* a, int64_t t0, int64_t t1) {
                fn(*o.w, a, m, o.y, o.ldy, t0, t1);
              });
}

bool use_int8(const PackedShape& s, int64_t m, MatmulPath path) {
  switch (path) {
    case MatmulPath::kLut: return false;
    case MatmulPath::kInt8: return true;
    default: return int8_path_wins(s, m);
  }
}
}  // namespace

MatmulPath matmul_path_from_name(const std::string& name) {
  if (name.empty() || name == "auto") return MatmulPath::kAuto;
  if (name == "lut") return MatmulPath::kLut;
  if (name == "int8") return MatmulPath::kInt8;
  throw std::invalid_argument("matmul path must be 'auto', 'lut' or 'int8', got '" + name + "'");
}

const char* matmul_path_name(MatmulPath p) {
  switch (p) {
    case MatmulPath::kLut: return "lut";
    case MatmulPath::kInt8: return "int8";
    default: return "auto";
  }
}

bool int8_path_wins(const PackedShape& s, int64_t m) {
  // Measured with tools/bench_kernels.py-style timing on the shapes of the
  // 0.1-1.5B models (docs/ARCHITECTURE.md): with the vectorised tables the LUT
  // GEMM keeps up to a few tokens; the int8 kernel's cost does not depend on
  // the bit width, so the fewer planes, the later it wins.
  const int64_t min_m = s.planes() >= 3 ? 8 : 16;
  return m >= min_m;
}

void lut_matmul(const PackedView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, CpuIsa isa,
                ThreadPool& pool, bool int8) {
  check(w.shape, m, ldx, ldy);
  const MatmulOut o{&w, y, ldy};
  matmul_same_input(&o, 1, x, m, ldx, isa, pool, int8, nullptr);
}

void lut_matmul_multi(const MatmulOut* outs, int n_out, const float* x, int64_t m, int64_t ldx, CpuIsa isa,
                      ThreadPool& pool, MatmulPath path, double* prep_seconds) {
  if (n_out <= 0) return;
  const PackedShape& s0 = outs[0].w->shape;
  const bool int8 = use_int8(s0, m, path);
  bool shared = true;
  for (int i = 0; i < n_out; ++i) {
    const PackedShape& s = outs[i].w->shape;
    check(s, m, ldx, outs[i].ldy);
    // Tables and int8 activations depend only on K, the group size and the
    // table-scale block, not on the weight type (a recipe may give attn_v more
    // bits than q/k); the kernel family must agree too.
    shared = shared && s.k == s0.k && s.group == s0.group && s.table_group() == s0.table_group() &&
             use_int8(s, m, path) == int8;
  }
  if (shared) {
    matmul_same_input(outs, n_out, x, m, ldx, isa, pool, int8, prep_seconds);
    return;
  }
  for (int i = 0; i < n_out; ++i)
    matmul_same_input(outs + i, 1, x, m, ldx, isa, pool, use_int8(outs[i].w->shape, m, path), prep_seconds);
}

}  // namespace edgelut
