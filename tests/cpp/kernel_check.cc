// Standalone kernel check (no Python): for every ISA this CPU runs, packs
// random codes of every weight type, group size and symmetry on odd shapes,
// runs lut_matmul for one token (GEMV) and several (GEMM), and checks
//   1. the output is bit-identical to the scalar reference kernel, and
//   2. it is within lut.h's documented table error bound (plus a small float
//      rounding slack) of a double-precision dot product with the dequantised
//      weights.
// Usage: kernel_check [--quick] [--verbose]
// Prints "kernel_check: N passed, M failed" and exits 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "engine/thread_pool.h"
#include "kernels/cpu_isa.h"
#include "kernels/dispatch.h"
#include "kernels/layout.h"
#include "kernels/lut.h"
#include "kernels/lut_ops.h"

using namespace edgelut;

namespace {

struct Shape {
  int64_t n, k;
};

struct Case {
  PackedShape shape;
  int64_t m;
};

struct Counts {
  int passed = 0;
  int failed = 0;
  double worst_ratio = 0.0;  // largest |y - y_exact| / bound seen, to show the bound is not vacuous
};

std::string describe(const Case& c, const char* isa) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s n=%lld k=%lld g=%d %s%s m=%lld", isa, qtype_traits(c.shape.qtype).name,
                static_cast<long long>(c.shape.n), static_cast<long long>(c.shape.k), c.shape.group,
                c.shape.asym ? "asym" : "sym", c.shape.two_level() ? " two-level" : "", static_cast<long long>(c.m));
  return buf;
}

// A packed random matrix plus its exact (fp16-rounded) dequantised weights.
struct Matrix {
  std::vector<uint8_t> packed;
  std::vector<double> w;  // (n, k)
  std::vector<float> scales, mins;  // (n, groups), as stored (fp16-rounded)
};

Matrix make_matrix(const PackedShape& s, std::mt19937& rng) {
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int64_t ng = s.groups();
  std::uniform_int_distribution<int> code(tr.code_min, tr.code_max);
  std::uniform_real_distribution<float> scale(0.005f, 0.05f), sign(-1.0f, 1.0f);
  std::vector<int8_t> codes(static_cast<size_t>(s.n * s.k));
  std::vector<float> sc(static_cast<size_t>(s.n * ng)), mn(sc.size());
  for (auto& c : codes) c = static_cast<int8_t>(code(rng));
  for (auto& v : sc) v = scale(rng) * (sign(rng) < 0 ? -1.0f : 1.0f);
  for (auto& v : mn) v = 0.1f * sign(rng);
  Matrix mat;
  mat.packed.resize(s.total_bytes());
  if (s.two_level()) {
    // 4-bit sub-scales and sub-mins under per-super-block fp16 values (d may be negative too).
    std::uniform_int_distribution<int> nib(0, 15);
    std::vector<uint8_t> ls(sc.size()), lm(sc.size());
    for (auto& v : ls) v = static_cast<uint8_t>(nib(rng));
    for (auto& v : lm) v = static_cast<uint8_t>(nib(rng));
    std::vector<float> d(static_cast<size_t>(s.n * s.supers())), dmin(d.size());
    for (auto& v : d) v = scale(rng) / 8.0f * (sign(rng) < 0 ? -1.0f : 1.0f);
    for (auto& v : dmin) v = 0.01f * sign(rng);
    pack_codes_two_level(s, codes.data(), ls.data(), lm.data(), d.data(), dmin.data(), mat.packed.data());
  } else {
    pack_codes(s, codes.data(), sc.data(), mn.data(), mat.packed.data());
  }

  // Round-trip to get the scales and mins exactly as the kernel sees them.
  const PackedView v = PackedView::over(s, mat.packed.data());
  std::vector<int8_t> back(codes.size());
  mat.scales.resize(sc.size());
  mat.mins.resize(sc.size());
  unpack_codes(v, back.data(), mat.scales.data(), mat.mins.data());
  mat.w.resize(codes.size());
  for (int64_t r = 0; r < s.n; ++r) {
    for (int64_t col = 0; col < s.k; ++col) {
      const size_t gi = static_cast<size_t>(r * ng + col / s.group);
      const double level = back[r * s.k + col];
      mat.w[r * s.k + col] = s.asym ? mat.scales[gi] * level + mat.mins[gi]
                                    : mat.scales[gi] * (level - static_cast<double>(tr.center));
    }
  }
  return mat;
}

std::vector<float> make_input(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(c.m * c.shape.k));
  for (auto& v : x) v = normal(rng);
  // One token gets an all-zero first group (tscale 0) when there is a second.
  if (c.m > 1 && c.shape.k > c.shape.group)
    std::memset(x.data() + c.shape.k, 0, static_cast<size_t>(c.shape.group) * sizeof(float));
  return x;
}

// Per (token, row) allowed |y - y_exact|: lut.h's table bound plus a rounding
// slack proportional to the magnitudes the float epilogue adds up.
std::vector<double> error_bounds(const Case& c, const Matrix& mat, const std::vector<float>& x) {
  const PackedShape& s = c.shape;
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int64_t ng = s.groups();
  double icoef_sum = 0.0;
  for (int p = 0; p < tr.planes; ++p) icoef_sum += std::abs(tr.icoef[p]);
  std::vector<int8_t> tab(table_bytes(s));
  std::vector<float> tscale(ng), asum(ng);
  std::vector<double> bound(static_cast<size_t>(c.m * s.n));
  for (int64_t tok = 0; tok < c.m; ++tok) {
    const float* xt = x.data() + tok * s.k;
    build_tables(s, xt, tab.data(), tscale.data(), asum.data());
    for (int64_t r = 0; r < s.n; ++r) {
      double table = 0.0, magnitude = 0.0;
      for (int64_t g = 0; g < ng; ++g) {
        const double sc = std::abs(mat.scales[r * ng + g]);
        table += sc * 0.5 * tscale[g] * 0.5 * icoef_sum * (s.group / kChunk);
        // The integer sub-scale path rounds asum to steps of the super-block's tscale.
        if (s.int_subscales())
          table += (sc * std::abs(tr.center) + std::abs(mat.mins[r * ng + g])) * 0.5 * tscale[g];
        double l1 = 0.0;
        for (int64_t col = g * s.group; col < std::min<int64_t>(s.k, (g + 1) * s.group); ++col)
          l1 += std::abs(xt[col]);
        // asum is a float sum: its rounding error scales with the sum of |x| (l1), not with
        // |asum|, which cancels to near zero on some groups (seen with two-level offsets
        // whose group scale is 0, where the offset term is all of the output).
        magnitude += sc * (0.5 * icoef_sum * l1 + std::abs(tr.center) * l1);
        if (s.asym) magnitude += std::abs(mat.mins[r * ng + g]) * l1;
      }
      bound[tok * s.n + r] = table + 1e-5 * magnitude + 1e-30;
    }
  }
  return bound;
}

void run_case(const Case& c, std::mt19937& rng, ThreadPool& pool, bool verbose, Counts& counts) {
  const PackedShape& s = c.shape;
  const Matrix mat = make_matrix(s, rng);
  const std::vector<float> x = make_input(c, rng);
  const PackedView v = PackedView::over(s, mat.packed.data());
  const std::vector<double> bound = error_bounds(c, mat, x);

  std::vector<double> exact(static_cast<size_t>(c.m * s.n));
  for (int64_t tok = 0; tok < c.m; ++tok)
    for (int64_t r = 0; r < s.n; ++r) {
      double acc = 0.0;
      for (int64_t col = 0; col < s.k; ++col) acc += mat.w[r * s.k + col] * x[tok * s.k + col];
      exact[tok * s.n + r] = acc;
    }

  // Output rows are padded by 3 so a kernel writing past n is caught.
  const int64_t ldy = s.n + 3;
  const float canary = -12345.0f;
  std::vector<float> ref(static_cast<size_t>(c.m * ldy), canary);
  lut_matmul(v, x.data(), c.m, s.k, ref.data(), ldy, CpuIsa::kScalar, pool);

  for (CpuIsa isa : supported_isas()) {
    std::vector<float> y(static_cast<size_t>(c.m * ldy), canary);
    std::string why;
    try {
      lut_matmul(v, x.data(), c.m, s.k, y.data(), ldy, isa, pool);
    } catch (const std::exception& e) {
      why = std::string("threw: ") + e.what();
    }
    for (int64_t tok = 0; tok < c.m && why.empty(); ++tok) {
      for (int64_t r = 0; r < ldy && why.empty(); ++r) {
        const float got = y[tok * ldy + r], want = ref[tok * ldy + r];
        char buf[200];
        if (std::memcmp(&got, &want, sizeof got) != 0) {
          std::snprintf(buf, sizeof buf, "token %lld row %lld: %.9g differs from the scalar reference %.9g",
                        static_cast<long long>(tok), static_cast<long long>(r), got, want);
          why = buf;
        } else if (r < s.n) {
          const double err = std::abs(static_cast<double>(got) - exact[tok * s.n + r]);
          counts.worst_ratio = std::max(counts.worst_ratio, err / bound[tok * s.n + r]);
          if (!(err <= bound[tok * s.n + r])) {
            std::snprintf(buf, sizeof buf, "token %lld row %lld: |%.9g - %.9g| = %.3g exceeds the bound %.3g",
                          static_cast<long long>(tok), static_cast<long long>(r), got, exact[tok * s.n + r],
                          err, bound[tok * s.n + r]);
            why = buf;
          }
        } else if (got != canary) {
          why = "wrote past the last row";
        }
      }
    }
    if (why.empty()) {
      ++counts.passed;
      if (verbose) std::printf("ok   %s\n", describe(c, isa_name(isa)).c_str());
    } else {
      ++counts.failed;
      std::printf("FAIL %s: %s\n", describe(c, isa_name(isa)).c_str(), why.c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--verbose") {
      verbose = true;
    } else {
      std::fprintf(stderr, "kernel_check: unknown argument '%s' (expected --quick or --verbose)\n", argv[i]);
      return 2;
    }
  }
  // Quick mode keeps every type, group and symmetry but only small shapes.
  std::vector<Shape> shapes = {{1, 4}, {65, 33}, {130, 200}};
  std::vector<int64_t> tokens = {1, 5};
  if (!quick) {
    shapes.push_back({192, 576});
    shapes.push_back({64, 128});
    tokens.push_back(11);  // crosses the NEON GEMM's 8-token block
  }
  std::string isas;
  for (CpuIsa isa : supported_isas()) isas += std::string(isas.empty() ? "" : " ") + isa_name(isa);
  std::printf("kernel_check: ISAs on this CPU: %s%s\n", isas.c_str(), quick ? " (quick)" : "");

  std::mt19937 rng(20261122);
  ThreadPool pool(2);
  Counts counts;
  for (int q = 0; q < static_cast<int>(QType::kCount); ++q)
    for (int group : {32, 64, 128})
      for (int variant : {0, 1, 2})  // symmetric, asymmetric, two-level scales
        for (const Shape& sh : shapes)
          for (int64_t m : tokens) {
            Case c;
            c.shape.n = sh.n;
            c.shape.k = sh.k;
            c.shape.qtype = static_cast<QType>(q);
            c.shape.group = group;
            c.shape.asym = variant > 0;
            c.shape.super = variant == 2 ? 256 : 0;
            c.m = m;
            try {
              run_case(c, rng, pool, verbose, counts);
            } catch (const std::exception& e) {
              ++counts.failed;
              std::printf("FAIL %s: %s\n", describe(c, "setup").c_str(), e.what());
            }
          }
  std::printf("kernel_check: largest error / bound = %.3f\n", counts.worst_ratio);
  std::printf("kernel_check: %d passed, %d failed\n", counts.passed, counts.failed);
  return counts.failed == 0 ? 0 : 1;
}
