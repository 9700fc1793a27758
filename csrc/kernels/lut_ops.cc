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
    const size_t kp = static_cast<size_t>(s.k_padded());
    const size_t ng = static_cast<size_t>(s.groups());
    sc.xu.resize(kp * m);
    sc.tscale.resize(ng * m);
    sc.asum.resize(ng * m);
    sc.iacts.resize(m);
    for (int64_t i = 0; i < m; ++i)
      sc.iacts[i] = Int8Acts{sc.xu.data() + kp * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i};
    pool.parallel_for(m, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        quantize_acts_int8(s, x + i * ldx, sc.xu.data() + kp * i, sc.tscale.data() + ng * i,
                           sc.asum.data() + ng * i);
    });
    const Int8GemmFn fn = ks.gemm_int8;
    const Int8Acts* acts = sc.iacts.data();
    pool.parallel_for(s.tiles(), [&](int64_t t0, int64_t t1) { fn(w, acts, m, y, ldy, t0, t1); });
    return;
  }
  const size_t tb = table_bytes(s);
  const size_t ng = static_cast<size_t>(s.groups());
  sc.tab.resize(tb * m);
  sc.tscale.resize(ng * m);
  sc.asum.resize(ng * m);
  sc.acts.resize(m);
  for (int64_t i = 0; i < m; ++i)
    sc.acts[i] = ActTables{sc.tab.data() + tb * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i};

  // Tables: one per token, split over tokens (a single token builds inline).
  pool.parallel_for(m, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      build_tables(s, x + i * ldx, sc.tab.data() + tb * i, sc.tscale.data() + ng * i, sc.asum.data() + ng * i);
  });
  const LutGemmFn fn = m == 1 ? ks.gemv : ks.gemm;
  const ActTables* acts = sc.acts.data();
  pool.parallel_for(s.tiles(), [&](int64_t t0, int64_t t1) { fn(w, acts, m, y, ldy, t0, t1); });
}

}  // namespace edgelut
