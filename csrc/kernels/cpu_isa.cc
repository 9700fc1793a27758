#include "cpu_isa.h"

#include <cstdlib>
#include <utility>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace edgelut {

namespace {

struct Features {
  bool avx2 = false;
  bool avx512 = false;  // F + BW + VL + VBMI + VNNI, what the AVX-512 kernel uses
  bool neon = false;
  // AArch64 extensions no kernel uses yet, detected and reported
  // (cpu_features()) for the int8 paths that could (docs/ARCHITECTURE.md).
  bool dotprod = false;  // SDOT/UDOT, Armv8.2 optional, Armv8.4 mandatory
  bool i8mm = false;     // SMMLA/USDOT, Armv8.6
};

#if defined(__aarch64__) && defined(__linux__)
// Linux's HWCAP bits (arch/arm64/include/uapi/asm/hwcap.h), spelled out
// because old glibc headers (the manylinux2014 / glibc 2.17 build) lack them.
constexpr unsigned long kHwcapAsimd = 1ul << 1;
constexpr unsigned long kHwcapAsimdDp = 1ul << 20;
constexpr unsigned long kHwcap2I8mm = 1ul << 13;
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#endif

#if defined(__x86_64__) || defined(_M_X64)
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

Features detect() {
  Features f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;
  const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), vbmi = c & (1u << 1), vnni = c & (1u << 11);
  f.avx2 = ymm_ok && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_ok && avx512f && avx512bw && avx512vl && vbmi && vnni;
#elif defined(__aarch64__) && defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  f.neon = hwcap & kHwcapAsimd;
  f.dotprod = f.neon && (hwcap & kHwcapAsimdDp);
  f.i8mm = f.neon && (hwcap2 & kHwcap2I8mm);
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory on AArch64.
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

}  // namespace

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kNeon: return "neon";
  }
  return "unknown";
}

CpuIsa isa_from_name(const std::string& name) {
  for (CpuIsa i : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kNeon})
    if (name == isa_name(i)) return i;
  throw std::invalid_argument("unknown ISA '" + name + "' (expected scalar, avx2, avx512 or neon)");
}

bool isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
    case CpuIsa::kAvx2: return features().avx2;
    case CpuIsa::kAvx512: return features().avx512;
    case CpuIsa::kNeon: return features().neon;
  }
  return false;
}

std::vector<std::string> cpu_features() {
  const Features& f = features();
  std::vector<std::string> out;
  for (const auto& [on, name] : {std::pair<bool, const char*>{f.avx2, "avx2"},
                                 {f.avx512, "avx512"},
                                 {f.neon, "asimd"},
                                 {f.dotprod, "asimddp"},
                                 {f.i8mm, "i8mm"}})
    if (on) out.emplace_back(name);
  return out;
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa i : {CpuIsa::kScalar, CpuIsa::kNeon, CpuIsa::kAvx2, CpuIsa::kAvx512})
    if (isa_supported(i)) out.push_back(i);
  return out;
}

namespace {
CpuIsa resolve() {
  const char* env = std::getenv("EDGELUT_ISA");
  if (env && *env) {
    const CpuIsa want = isa_from_name(env);
    if (!isa_supported(want))
      throw std::runtime_error(std::string("EDGELUT_ISA=") + env + " but this CPU does not support it");
    return want;
  }
  return supported_isas().back();
}
}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = resolve();
  return isa;
}

}  // namespace edgelut
