// Sliding-window weight pager: only W layer slots are resident; a loader
// thread reads the next layers (in file order, wrapping to layer 0 for the
// next token) into free slots while the engine computes the current ones.
//
// Usage, per forward pass:
//   for (int l = 0; l < pager.n_layers(); ++l) {
//     const uint8_t* w = pager.acquire(l);  // blocks only if not loaded yet
//     ... compute layer l from w[0 .. layer_size(l)) ...
//     pager.release(l);                     // the loader may now reuse the slot
//   }
//
// W == n_layers means fully resident: everything is read once by the
// constructor, no loader thread runs, acquire() returns at once.
//
// A layer is normally one byte range. It may also be several pieces (the
// row tiles of a packed matrix: codes, scales and mins live in three
// sections), read one after the other into the slot, each piece starting on
// a 64-byte boundary at piece_offset(layer, i). Multi-piece layers are always
// read buffered (O_DIRECT would need every piece page-aligned).
//
// Errors: bad arguments throw std::invalid_argument; an I/O failure (file
// truncated, read error) is recorded by the loader, which wakes every waiter,
// and acquire() of a layer that is not resident then throws
// std::runtime_error naming the file, the layer and the cause.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "huge_memory.h"

namespace edgelut {

// One layer's bytes in the file.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct PagerOptions {
  // posix_fadvise(DONTNEED) on each range after it is read (and on the whole
  // file at start), so the page cache cannot hide the disk.
  bool drop_cache = false;
  // O_DIRECT with 4096-aligned buffers, offsets and lengths. If the
  // filesystem refuses, the pager falls back to buffered reads and says why
  // in Pager::io_note().
  bool direct_io = false;
};

struct PagerStats {
  uint64_t acquires = 0;          // acquire() calls
  uint64_t waits = 0;             // acquire() calls that had to block
  uint64_t wait_ns = 0;           // total time blocked in acquire()
  uint64_t max_wait_ns = 0;       // longest single block
  std::vector<uint64_t> layer_wait_ns;  // (n_layers) time blocked, per layer
  uint64_t reads = 0;             // layer reads (one per loaded layer)
  uint64_t bytes_read = 0;        // bytes transferred by those reads
  uint64_t read_ns = 0;           // time spent in those reads (loader side)
  uint64_t slot_bytes = 0;        // bytes allocated for slots (constant)
  uint64_t resident_bytes = 0;    // layer bytes now loading, ready or in use
  uint64_t peak_resident_bytes = 0;  // maximum of resident_bytes
};

class Pager {
 public:
  // layers: byte ranges in file order; window: 1..layers.size().
  Pager(std::string path, std::vector<ByteRange> layers, int window, PagerOptions options = {});
  // layers[l]: the pieces of layer l, read back to back into its slot.
  Pager(std::string path, std::vector<std::vector<ByteRange>> layers, int window, PagerOptions options = {});
  ~Pager();
  Pager(const Pager&) = delete;
  Pager& operator=(const Pager&) = delete;

  int n_layers() const { return static_cast<int>(pieces_.size()); }
  uint64_t huge_bytes() const { return arena_.huge_bytes(); }  // of the slots, backed by huge pages now
  int window() const { return window_; }
  bool resident() const { return window_ == n_layers(); }
  const std::string& path() const { return path_; }
  // Bytes of the layer in its slot (pieces and their 64-byte padding).
  uint64_t layer_size(int layer) const;
  int n_pieces(int layer) const;
  // Where piece i of the layer starts, from the pointer acquire() returns.
  uint64_t piece_offset(int layer, int piece) const;
  // A synchronous read of [offset, offset + size) of the file into dst, on
  // the caller's thread (a token row of a paged embedding). Throws
  // std::runtime_error naming the file and the cause.
  void read_bytes(uint64_t offset, uint64_t size, uint8_t* dst);
  // True if reads really use O_DIRECT (false after a fallback).
  bool direct_io() const { return direct_; }
  // Why direct I/O was not used, if it was asked for and refused; else "".
  const std::string& io_note() const { return io_note_; }

  // Returns the layer's bytes (layer_size(layer) of them), valid until
  // release(layer). Blocks until loaded. Acquiring layers out of the usual
  // order is allowed (the window restarts there) but costs the prefetch.
  const uint8_t* acquire(int layer);
  void release(int layer);

  PagerStats stats() const;
  void reset_stats();

  // The largest window W (1..n) whose slots plus fixed_bytes (pinned tensors,
  // KV cache, scratch) fit in budget_bytes. Throws std::invalid_argument
  // naming the minimum budget if not even W = 1 fits.
  static int window_for_budget(const std::vector<uint64_t>& layer_sizes, uint64_t fixed_bytes,
                               uint64_t budget_bytes);
  // Bytes the pager allocates for a window (what window_for_budget counts).
  static uint64_t slot_bytes_for(const std::vector<uint64_t>& layer_sizes, int window);

 private:
  enum class SlotState { kFree, kLoading, kReady };
  struct Slot {
    uint8_t* buf = nullptr;  // kAlign-aligned
    int layer = -1;
    SlotState state = SlotState::kFree;
    int refs = 0;            // acquire() minus release() while kReady
    uint64_t skew = 0;       // the layer starts at buf + skew (direct I/O alignment)
  };

  void open_file();
  void allocate_slots();
  void load_all_resident();
  void loader_loop();
  // Reads layer into slot; returns "" or the error text. No lock held.
  std::string read_layer(int layer, Slot& slot, uint64_t* bytes, uint64_t* ns);
  std::string read_span(uint64_t offset, uint64_t want, uint64_t need, uint8_t* dst, uint64_t* got);
  Slot* find_slot(int layer);
  Slot* find_free_slot();
  bool loader_has_work() const;
  void track_resident(int64_t delta);
  [[noreturn]] void throw_error(int layer) const;

  const std::string path_;
  const std::vector<std::vector<ByteRange>> pieces_;  // (n_layers) pieces of each layer
  std::vector<std::vector<uint64_t>> piece_at_;        // (n_layers) slot offset of each piece
  std::vector<uint64_t> sizes_;                        // (n_layers) layer_size()
  bool multi_piece_ = false;
  const int window_;
  const PagerOptions options_;
  int fd_ = -1;
  bool direct_ = false;
  std::string io_note_;
  uint64_t slot_bytes_ = 0;
  std::vector<Slot> slots_;
  HugeMemory arena_;  // every slot; huge pages stream faster (huge_memory.h)

  mutable std::mutex mu_;
  std::condition_variable cv_;  // slot state changes, errors, stop
  int next_load_ = 0;           // the next layer the loader reads
  bool stop_ = false;
  std::string error_;           // set once by the loader; then it stops
  int error_layer_ = -1;        // the layer whose read failed
  PagerStats stats_;
  std::thread loader_;
};

// Holds one layer for a scope: acquire() in the constructor, release() in
// the destructor, so an exception inside a layer's compute cannot leak a
// slot. A null pager holds nothing (the fully-resident, unpaged engine).
class LayerLease {
 public:
  LayerLease(Pager* pager, int layer) : pager_(pager), layer_(layer) {
    if (pager_) data_ = pager_->acquire(layer_);
  }
  ~LayerLease() {
    if (!pager_) return;
    try {
      pager_->release(layer_);
    } catch (...) {
      // Cannot happen for a lease that acquired; a destructor must not throw.
    }
  }
  LayerLease(const LayerLease&) = delete;
  LayerLease& operator=(const LayerLease&) = delete;
  const uint8_t* data() const { return data_; }

 private:
  Pager* pager_;
  int layer_;
  const uint8_t* data_ = nullptr;
};

}  // namespace edgelut
