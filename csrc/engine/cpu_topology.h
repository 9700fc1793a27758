// How many cores the default thread count should use: on big.LITTLE (phones,
// some ARM boards and laptops) the little cores slow a parallel step down to
// their pace, so the default leaves them out.
#pragma once
#include <string>

namespace edgelut {

// Cores of the fast kind under `cpu_dir` (a /sys/devices/system/cpu tree):
// online CPUs whose cpu_capacity is at least half the largest, or, where the
// kernel gives no capacity, whose cpufreq/cpuinfo_max_freq is at least 80% of
// the highest. 0 when the tree says neither for some CPU (unknown topology).
int fast_core_count(const std::string& cpu_dir);

}  // namespace edgelut
