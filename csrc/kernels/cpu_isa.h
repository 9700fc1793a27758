// CPU feature detection: the one place that knows which ISA runs.
#pragma once
#include <string>
#include <vector>

namespace edgelut {

enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

const char* isa_name(CpuIsa isa);
// Throws std::invalid_argument for an unknown name.
CpuIsa isa_from_name(const std::string& name);
// Whether this CPU (and this build) can run the ISA.
bool isa_supported(CpuIsa isa);
// The CPU features the kernels look at, by their Linux names: avx2, avx512
// (the F+BW+VL+DQ+VBMI+VNNI set), asimd, asimddp (dotprod), i8mm.
std::vector<std::string> cpu_features();
// Every ISA this CPU can run, best last.
std::vector<CpuIsa> supported_isas();
// The ISA to use: EDGELUT_ISA if set (throws std::runtime_error when the CPU
// lacks it), otherwise the best supported one. Cached after the first call.
CpuIsa cpu_isa();

}  // namespace edgelut
