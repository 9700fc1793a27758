#include "lut_ops.h"

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
// kernel over row tiles in parallel.
template <typename Acts, typename Elem, typename Prepare, typename Kernel>
void run_blocked(const PackedShape& s, const float* x, int64_t m, int64_t ldx, size_t per_token,
                 std::vector<Elem>& data, std::vector<Acts>& acts, Scratch& sc, ThreadPool& pool,
                 const Prepare& prepare, const Kernel& kernel) {
  const size_t ng = static_cast<size_t>(s.groups());
  data.resize(per_token * m);
  sc.tscale.resize(ng * m);
  sc.asum.resize(ng * m);
  acts.resize(m);
  for (int64_t i = 0; i < m; ++i)
    acts[i] = Acts{data.data() + per_token * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i};
  pool.parallel_for(m, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      prepare(s, x + i * ldx, data.data() + per_token * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i);
  });
  const Acts* ap = acts.data();
  pool.parallel_for(s.tiles(), [&](int64_t t0, int64_t t1) { kernel(ap, t0, t1); });
}
}  // namespace

void lut_matmul(const PackedView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, CpuIsa isa,
                ThreadPool& pool, bool int8) {
  const PackedShape& s = w.shape;
  if (m <= 0) throw std::invalid_argument("lut_matmul: need at least one token");
  if (ldx < s.k) throw std::invalid_argument("lut_matmul: input row stride is smaller than K");
  if (ldy < s.n) throw std::invalid_argument("lut_matmul: output row stride is smaller than N");
  const KernelSet& ks = kernels_for(isa);

  Scratch& sc = scratch();
  if (int8 && ks.gemm_int8) {
    const Int8GemmFn fn = ks.gemm_int8;
    run_blocked(s, x, m, ldx, static_cast<size_t>(s.k_padded()), sc.xu, sc.iacts, sc, pool, quantize_acts_int8,
                [&](const Int8Acts* a, int64_t t0, int64_t t1) { fn(w, a, m, y, ldy, t0, t1); });
    return;
  }
  // Tables: one per token, split over tokens (a single token builds inline).
  const LutGemmFn fn = m == 1 ? ks.gemv : ks.gemm;
  run_blocked(s, x, m, ldx, table_bytes(s), sc.tab, sc.acts, sc, pool, build_tables,
              [&](const ActTables* a, int64_t t0, int64_t t1) { fn(w, a, m, y, ldy, t0, t1); });
}

}  // namespace edgelut
