#include "cpu_topology.h"

#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <vector>

namespace edgelut {

namespace {

// The first number in a sysfs file, or -1 when it is missing or unreadable.
long long read_number(const std::string& path) {
  std::ifstream f(path);
  long long v = -1;
  if (!(f >> v)) return -1;
  return v;
}

// cpuN directory names, N a decimal number.
std::vector<std::string> cpu_dirs(const std::string& cpu_dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(cpu_dir.c_str());
  if (!d) return out;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > 3 && name.compare(0, 3, "cpu") == 0 &&
        std::all_of(name.begin() + 3, name.end(), [](char c) { return c >= '0' && c <= '9'; }))
      out.push_back(cpu_dir + "/" + name);
  }
  ::closedir(d);
  return out;
}

// Count of values >= fraction * max; 0 when any value is missing.
int count_fast(const std::vector<long long>& values, double fraction) {
  if (values.empty()) return 0;
  if (std::any_of(values.begin(), values.end(), [](long long v) { return v <= 0; })) return 0;
  const long long mx = *std::max_element(values.begin(), values.end());
  return static_cast<int>(
      std::count_if(values.begin(), values.end(), [&](long long v) { return v >= fraction * static_cast<double>(mx); }));
}

}  // namespace

int fast_core_count(const std::string& cpu_dir) {
  std::vector<long long> capacity, freq;
  for (const std::string& cpu : cpu_dirs(cpu_dir)) {
    // cpu0 usually has no `online` file (it cannot go offline); absent means online.
    if (read_number(cpu + "/online") == 0) continue;
    capacity.push_back(read_number(cpu + "/cpu_capacity"));
    freq.push_back(read_number(cpu + "/cpufreq/cpuinfo_max_freq"));
  }
  // Capacity is the scheduler's own measure of relative speed (1024 = the
  // fastest core); max frequency is the fallback, a weaker one, hence the
  // tighter bar: little cores run at ~55-75% of the big ones' clock.
  if (const int n = count_fast(capacity, 0.5)) return n;
  return count_fast(freq, 0.8);
}

}  // namespace edgelut
