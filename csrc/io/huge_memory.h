// Anonymous memory advised for transparent huge pages (THP), and a whole file
// read into it.
//
// Decode streams every weight from DRAM once per token. With 4 KiB pages that
// is a TLB miss every 4 KiB and the hardware prefetchers stop at every page
// boundary; in 2 MiB pages neither happens. Measured on the Zen 4 VM
// (docs/BENCHMARKS.md, "Weights in huge pages"): a whole Qwen2.5-Coder-1.5B
// decode at two threads ran 1.10-1.13x faster, at one thread within noise.
// A file mapping cannot get huge pages on ext4 and most other filesystems, so
// the engine reads a resident model into this memory instead of mapping it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace edgelut {

// Whether the kernel offers transparent huge pages to madvise'd memory
// (/sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise").
bool huge_pages_available();

// MemAvailable of /proc/meminfo in bytes (0 where it cannot be read).
uint64_t memory_available();

// A private anonymous mapping of at least `bytes`. From 2 MiB up it starts on
// a 2 MiB boundary and is advised MADV_HUGEPAGE; below, it is plain pages.
// Untouched pages cost no memory.
class HugeMemory {
 public:
  HugeMemory() = default;
  // Throws std::runtime_error (naming `what`) when the memory is refused.
  HugeMemory(uint64_t bytes, const std::string& what);
  ~HugeMemory();
  HugeMemory(HugeMemory&& o) noexcept;
  HugeMemory& operator=(HugeMemory&& o) noexcept;
  HugeMemory(const HugeMemory&) = delete;
  HugeMemory& operator=(const HugeMemory&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Makes the memory read-only (a stray write then faults instead of
  // corrupting weights).
  void protect_read_only();
  // Bytes of [data, data + size) the kernel backs with huge pages now, from
  // /proc/self/smaps (0 where that cannot be read).
  uint64_t huge_bytes() const;

 private:
  void release();
  uint8_t* base_ = nullptr;  // the mapping as mmap returned it
  uint64_t mapped_ = 0;
  uint8_t* data_ = nullptr;  // base_ rounded up to 2 MiB
  uint64_t size_ = 0;
};

// `bytes` bytes of the open file `fd` from offset 0 into `dst`, in large
// preads (EINTR and short reads retried). Throws FileAccessError naming `path`
// when the file ends early or a read fails.
void read_whole(int fd, const std::string& path, uint8_t* dst, uint64_t bytes);

}  // namespace edgelut
