#include "huge_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "gguf.h"

namespace edgelut {
namespace {

constexpr uint64_t kHugePage = uint64_t{2} << 20;
constexpr uint64_t kSmallPage = 4096;

}  // namespace

bool huge_pages_available() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!f || !std::getline(f, line)) return false;
  return line.find("[always]") != std::string::npos || line.find("[madvise]") != std::string::npos;
}

uint64_t memory_available() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kb) == 1) return kb * 1024;
  }
  return 0;
}

HugeMemory::HugeMemory(uint64_t bytes, const std::string& what) {
  // Less than a huge page gets plain pages: one touched byte of an advised
  // range would cost a whole 2 MiB page.
  const bool huge = bytes >= kHugePage;
  const uint64_t unit = huge ? kHugePage : kSmallPage;
  size_ = (std::max<uint64_t>(bytes, 1) + unit - 1) / unit * unit;
  // One huge page more than asked, so that a 2 MiB-aligned start fits.
  mapped_ = huge ? size_ + kHugePage : size_;
  void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw std::runtime_error("cannot allocate " + std::to_string(bytes) + " bytes for " + what + ": " +
                             std::strerror(errno));
  base_ = static_cast<uint8_t*>(p);
  data_ = huge ? reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base_) + kHugePage - 1) & ~(kHugePage - 1))
               : base_;
#ifdef MADV_HUGEPAGE
  // Advice only: where THP is off the memory is plain pages, and still correct.
  if (huge) ::madvise(data_, size_, MADV_HUGEPAGE);
#endif
}

HugeMemory::~HugeMemory() { release(); }

HugeMemory::HugeMemory(HugeMemory&& o) noexcept { *this = std::move(o); }

HugeMemory& HugeMemory::operator=(HugeMemory&& o) noexcept {
  if (this != &o) {
    release();
    base_ = o.base_;
    mapped_ = o.mapped_;
    data_ = o.data_;
    size_ = o.size_;
    o.base_ = o.data_ = nullptr;
    o.mapped_ = o.size_ = 0;
  }
  return *this;
}

void HugeMemory::release() {
  if (base_) ::munmap(base_, mapped_);
  base_ = data_ = nullptr;
  mapped_ = size_ = 0;
}

void HugeMemory::protect_read_only() {
  if (data_) ::mprotect(data_, size_, PROT_READ);
}

uint64_t HugeMemory::huge_bytes() const {
  if (!data_) return 0;
  std::ifstream f("/proc/self/smaps");
  const uintptr_t lo = reinterpret_cast<uintptr_t>(data_), hi = lo + size_;
  uint64_t total = 0;
  uintptr_t begin = 0, end = 0;
  std::string line;
  while (std::getline(f, line)) {
    unsigned long long a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &a, &b) == 2) {
      begin = static_cast<uintptr_t>(a);
      end = static_cast<uintptr_t>(b);
      continue;
    }
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "AnonHugePages: %llu kB", &kb) == 1 && begin < hi && end > lo) {
      // A mapping merged with neighbours counts at most its overlap with ours.
      const uint64_t overlap = std::min<uintptr_t>(end, hi) - std::max<uintptr_t>(begin, lo);
      total += std::min<uint64_t>(kb * 1024, overlap);
    }
  }
  return total;
}

void read_whole(int fd, const std::string& path, uint8_t* dst, uint64_t bytes) {
  constexpr uint64_t kStep = uint64_t{64} << 20;
  uint64_t at = 0;
  while (at < bytes) {
    const ssize_t n = ::pread(fd, dst + at, std::min(kStep, bytes - at), static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw FileAccessError(path + ": cannot read at byte " + std::to_string(at) + ": " + std::strerror(errno));
    if (n == 0)
      throw FileAccessError(path + ": the file ended at byte " + std::to_string(at) + " while being read (" +
                            std::to_string(bytes) + " bytes expected; did it change?)");
    at += static_cast<uint64_t>(n);
  }
}

}  // namespace edgelut
