#include "pager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace edgelut {

namespace {

// Slot alignment: the page size, and the block size O_DIRECT needs on every
// common filesystem.
constexpr uint64_t kAlign = 4096;

uint64_t align_down(uint64_t x) { return x & ~(kAlign - 1); }
uint64_t align_up(uint64_t x) { return (x + kAlign - 1) & ~(kAlign - 1); }

uint64_t now_ns() {
  using namespace std::chrono;
  return static_cast<uint64_t>(duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count());
}

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

std::string range_text(const ByteRange& r) {
  return "bytes [" + std::to_string(r.offset) + ", " + std::to_string(r.offset + r.size) + ")";
}

std::vector<std::vector<ByteRange>> one_piece_each(std::vector<ByteRange> layers) {
  std::vector<std::vector<ByteRange>> out;
  out.reserve(layers.size());
  for (const ByteRange& r : layers) out.push_back({r});
  return out;
}

std::string mib(uint64_t bytes) {
  const uint64_t tenths = (bytes >> 20) * 10 + ((bytes & ((1u << 20) - 1)) * 10 >> 20);
  return std::to_string(tenths / 10) + "." + std::to_string(tenths % 10) + " MiB";
}

}  // namespace

Pager::Pager(std::string path, std::vector<ByteRange> layers, int window, PagerOptions options)
    : Pager(std::move(path), one_piece_each(std::move(layers)), window, options) {}

Pager::Pager(std::string path, std::vector<std::vector<ByteRange>> layers, int window, PagerOptions options)
    : path_(std::move(path)), pieces_(std::move(layers)), window_(window), options_(options) {
  if (pieces_.empty()) throw std::invalid_argument("pager: " + path_ + ": no layer ranges given");
  if (window_ < 1 || window_ > n_layers())
    throw std::invalid_argument("pager: window must be in 1.." + std::to_string(n_layers()) + " (the layer count), got " +
                                std::to_string(window_));
  for (int l = 0; l < n_layers(); ++l) {
    if (pieces_[l].empty()) throw std::invalid_argument("pager: " + path_ + ": layer " + std::to_string(l) + " has no pieces");
    std::vector<uint64_t> at;
    uint64_t end = 0;
    for (const ByteRange& r : pieces_[l]) {
      if (r.size == 0) throw std::invalid_argument("pager: " + path_ + ": layer " + std::to_string(l) + " is empty");
      const uint64_t start = (end + 63) & ~uint64_t{63};  // kernels want 64-byte aligned sections
      at.push_back(start);
      end = start + r.size;
    }
    piece_at_.push_back(std::move(at));
    sizes_.push_back(end);
    multi_piece_ |= pieces_[l].size() > 1;
  }
  open_file();
  allocate_slots();
  stats_.layer_wait_ns.assign(pieces_.size(), 0);
  stats_.slot_bytes = slot_bytes_;
  if (resident()) {
    try {
      load_all_resident();
    } catch (...) {
      ::close(fd_);
      throw;
    }
    return;
  }
  loader_ = std::thread([this] { loader_loop(); });
}

Pager::~Pager() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  // The loader checks stop_ between reads; a read in flight finishes first.
  if (loader_.joinable()) loader_.join();
  if (fd_ >= 0) ::close(fd_);
}

void Pager::open_file() {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error("pager: cannot open " + path_ + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error("pager: cannot stat " + path_ + ": " + errno_text(err));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  for (int l = 0; l < n_layers(); ++l) {
    for (const ByteRange& r : pieces_[l]) {
      if (r.offset > file_size || r.size > file_size - r.offset) {
        ::close(fd_);
        throw std::invalid_argument("pager: " + path_ + ": layer " + std::to_string(l) + " " + range_text(r) +
                                    " lies beyond the end of the file (" + std::to_string(file_size) + " bytes)");
      }
    }
  }
  if (options_.drop_cache) ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
  if (!options_.direct_io) return;
  if (multi_piece_) {
    io_note_ = "pager: direct I/O is not used for " + path_ + " because some layers are read in pieces; buffered reads";
    return;
  }

  // Some filesystems refuse O_DIRECT at open, others only at the first read:
  // probe both now, before any thread shares fd_.
  const int dfd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (dfd < 0) {
    io_note_ = "pager: direct I/O refused for " + path_ + " (open with O_DIRECT: " + errno_text(errno) +
               "); falling back to buffered reads";
    return;
  }
  void* probe = std::aligned_alloc(kAlign, kAlign);
  const ssize_t n = probe ? ::pread(dfd, probe, kAlign, 0) : -1;
  const int err = probe ? errno : ENOMEM;
  std::free(probe);
  if (n < 0) {
    ::close(dfd);
    io_note_ = "pager: direct I/O refused for " + path_ + " (read with O_DIRECT: " + errno_text(err) +
               "); falling back to buffered reads";
    return;
  }
  ::close(fd_);
  fd_ = dfd;
  direct_ = true;
}

void Pager::allocate_slots() {
  // With direct I/O a layer is read as the aligned span around it, so a slot
  // holds the span; the layer starts `skew` bytes into it.
  std::vector<uint64_t> span(pieces_.size());
  for (size_t l = 0; l < pieces_.size(); ++l) {
    const ByteRange& r = pieces_[l].front();  // direct I/O means one piece per layer
    span[l] = direct_ ? align_up(r.offset + r.size) - align_down(r.offset) : align_up(sizes_[l]);
  }
  const int n_slots = window_;
  std::vector<uint64_t> slot_span(n_slots);
  if (resident()) {
    slot_span = span;  // one slot per layer, each its own size
  } else {
    const uint64_t biggest = *std::max_element(span.begin(), span.end());
    std::fill(slot_span.begin(), slot_span.end(), biggest);
  }
  uint64_t total = 0;
  for (uint64_t s : slot_span) total += s;
  // Untouched pages cost no memory: RSS grows only as slots are filled.
  arena_ = HugeMemory(total, "pager: " + std::to_string(n_slots) + " slots of " + mib(total));
  slots_.resize(n_slots);
  uint64_t at = 0;
  for (int i = 0; i < n_slots; ++i) {
    slots_[i].buf = arena_.data() + at;
    at += slot_span[i];
  }
  slot_bytes_ = total;
}

int Pager::n_pieces(int layer) const {
  if (layer < 0 || layer >= n_layers())
    throw std::invalid_argument("pager: layer " + std::to_string(layer) + " out of range 0.." +
                                std::to_string(n_layers() - 1));
  return static_cast<int>(pieces_[layer].size());
}

uint64_t Pager::layer_size(int layer) const {
  n_pieces(layer);  // range check
  return sizes_[layer];
}

uint64_t Pager::piece_offset(int layer, int piece) const {
  if (piece < 0 || piece >= n_pieces(layer))
    throw std::invalid_argument("pager: layer " + std::to_string(layer) + " has no piece " + std::to_string(piece));
  return piece_at_[layer][piece];
}

void Pager::read_bytes(uint64_t offset, uint64_t size, uint8_t* dst) {
  // Buffered pread on a second descriptor: fd_ may be O_DIRECT, which needs
  // aligned buffers and offsets. Opened per call: rare (one row per token).
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("pager: cannot open " + path_ + ": " + errno_text(errno));
  uint64_t got = 0;
  std::string err;
  while (got < size) {
    const ssize_t n = ::pread(fd, dst + got, size - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno_text(errno);
      break;
    }
    if (n == 0) {
      err = "unexpected end of file at byte " + std::to_string(offset + got) + " (was the file truncated?)";
      break;
    }
    got += static_cast<uint64_t>(n);
  }
  if (options_.drop_cache) ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(size), POSIX_FADV_DONTNEED);
  ::close(fd);
  if (!err.empty())
    throw std::runtime_error("pager: reading " + range_text({offset, size}) + " of " + path_ + " failed: " + err);
}

std::string Pager::read_span(uint64_t offset, uint64_t want, uint64_t need, uint8_t* dst, uint64_t* got) {
  // pread may return fewer bytes than asked (signals, large requests): loop.
  *got = 0;
  while (*got < want) {
    const ssize_t n = ::pread(fd_, dst + *got, want - *got, static_cast<off_t>(offset + *got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_text(errno);
    }
    if (n == 0) break;  // end of file
    *got += static_cast<uint64_t>(n);
    // O_DIRECT returns whole blocks except at the end of the file, and a
    // further read from an unaligned offset would fail with EINVAL.
    if (direct_ && (static_cast<uint64_t>(n) % kAlign) != 0) break;
  }
  if (*got < need)
    return "unexpected end of file at byte " + std::to_string(offset + *got) + " (was the file truncated?)";
  return "";
}

std::string Pager::read_layer(int layer, Slot& slot, uint64_t* bytes, uint64_t* ns) {
  const uint64_t t0 = now_ns();
  *bytes = 0;
  for (size_t i = 0; i < pieces_[layer].size(); ++i) {
    const ByteRange& r = pieces_[layer][i];
    const uint64_t start = direct_ ? align_down(r.offset) : r.offset;
    const uint64_t want = direct_ ? align_up(r.offset + r.size) - start : r.size;
    slot.skew = r.offset - start;  // 0 unless direct (then there is one piece)
    uint64_t got = 0;
    std::string err = read_span(start, want, slot.skew + r.size, slot.buf + piece_at_[layer][i], &got);
    *bytes += got;
    if (options_.drop_cache)
      ::posix_fadvise(fd_, static_cast<off_t>(start), static_cast<off_t>(want), POSIX_FADV_DONTNEED);
    if (!err.empty()) {
      *ns = now_ns() - t0;
      return "pager: reading layer " + std::to_string(layer) + " (" + range_text(r) + ") of " + path_ + " failed: " + err;
    }
  }
  *ns = now_ns() - t0;
  return "";
}

void Pager::load_all_resident() {
  for (int l = 0; l < n_layers(); ++l) {
    uint64_t bytes = 0, ns = 0;
    std::string err = read_layer(l, slots_[l], &bytes, &ns);
    if (!err.empty()) throw std::runtime_error(err);
    slots_[l].layer = l;
    slots_[l].state = SlotState::kReady;
    stats_.reads += 1;
    stats_.bytes_read += bytes;
    stats_.read_ns += ns;
    track_resident(static_cast<int64_t>(sizes_[l]));
  }
}

Pager::Slot* Pager::find_slot(int layer) {
  for (Slot& s : slots_)
    if (s.layer == layer && s.state != SlotState::kFree) return &s;
  return nullptr;
}

Pager::Slot* Pager::find_free_slot() {
  for (Slot& s : slots_)
    if (s.state == SlotState::kFree) return &s;
  return nullptr;
}

bool Pager::loader_has_work() const {
  if (!error_.empty()) return false;
  for (const Slot& s : slots_)
    if (s.state == SlotState::kFree) return true;
  return false;
}

void Pager::track_resident(int64_t delta) {
  stats_.resident_bytes = static_cast<uint64_t>(static_cast<int64_t>(stats_.resident_bytes) + delta);
  stats_.peak_resident_bytes = std::max(stats_.peak_resident_bytes, stats_.resident_bytes);
}

void Pager::loader_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [this] { return stop_ || loader_has_work(); });
    if (stop_) return;
    const int layer = next_load_;
    next_load_ = (next_load_ + 1) % n_layers();
    // After a restart (out-of-order acquire) a layer may still be held: skip
    // it rather than hold two copies. W < n, so some layer is always missing.
    if (find_slot(layer)) continue;
    Slot& slot = *find_free_slot();
    slot.layer = layer;
    slot.state = SlotState::kLoading;
    track_resident(static_cast<int64_t>(sizes_[layer]));

    lk.unlock();
    uint64_t bytes = 0, ns = 0;
    std::string err = read_layer(layer, slot, &bytes, &ns);
    lk.lock();

    stats_.reads += 1;
    stats_.bytes_read += bytes;
    stats_.read_ns += ns;
    if (err.empty()) {
      slot.state = SlotState::kReady;
    } else {
      slot.state = SlotState::kFree;
      slot.layer = -1;
      track_resident(-static_cast<int64_t>(sizes_[layer]));
      error_ = std::move(err);  // loader_has_work() is now false: it parks
      error_layer_ = layer;
    }
    cv_.notify_all();
  }
}

void Pager::throw_error(int layer) const {
  if (layer == error_layer_) throw std::runtime_error(error_);
  throw std::runtime_error("pager: layer " + std::to_string(layer) + " is unavailable because an earlier read failed: " +
                           error_);
}

const uint8_t* Pager::acquire(int layer) {
  layer_size(layer);  // range check
  std::unique_lock<std::mutex> lk(mu_);
  stats_.acquires += 1;
  uint64_t t0 = 0;
  for (;;) {
    Slot* s = find_slot(layer);
    if (s && s->state == SlotState::kReady) {
      s->refs += 1;
      if (t0) {
        const uint64_t waited = now_ns() - t0;
        stats_.waits += 1;
        stats_.wait_ns += waited;
        stats_.max_wait_ns = std::max(stats_.max_wait_ns, waited);
        stats_.layer_wait_ns[layer] += waited;
      }
      return s->buf + s->skew;
    }
    if (!s) {  // neither resident nor loading
      if (!error_.empty()) throw_error(layer);
      if (layer != next_load_ || !find_free_slot()) {
        // Out of order (or the slots hold layers that were skipped): restart
        // the window at `layer` once the read in flight, if any, has landed.
        bool loading = false;
        for (const Slot& x : slots_) loading |= x.state == SlotState::kLoading;
        if (!loading) {
          for (Slot& x : slots_) {
            if (x.state == SlotState::kReady && x.refs == 0) {
              track_resident(-static_cast<int64_t>(sizes_[x.layer]));
              x.state = SlotState::kFree;
              x.layer = -1;
            }
          }
          if (!find_free_slot())
            throw std::runtime_error("pager: acquire(" + std::to_string(layer) + ") needs a slot but all " +
                                     std::to_string(window_) + " are held; release a layer first");
          next_load_ = layer;
          cv_.notify_all();
        }
      }
    }
    if (!t0) t0 = now_ns();
    cv_.wait(lk);
  }
}

void Pager::release(int layer) {
  layer_size(layer);  // range check
  std::lock_guard<std::mutex> lk(mu_);
  Slot* s = find_slot(layer);
  if (!s || s->state != SlotState::kReady || s->refs == 0)
    throw std::invalid_argument("pager: release(" + std::to_string(layer) + ") without a matching acquire");
  s->refs -= 1;
  if (s->refs > 0 || resident()) return;
  track_resident(-static_cast<int64_t>(sizes_[layer]));
  s->state = SlotState::kFree;
  s->layer = -1;
  cv_.notify_all();
}

PagerStats Pager::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Pager::reset_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  PagerStats fresh;
  fresh.layer_wait_ns.assign(pieces_.size(), 0);
  fresh.slot_bytes = stats_.slot_bytes;
  fresh.resident_bytes = stats_.resident_bytes;
  fresh.peak_resident_bytes = stats_.resident_bytes;
  stats_ = std::move(fresh);
}

uint64_t Pager::slot_bytes_for(const std::vector<uint64_t>& layer_sizes, int window) {
  const int n = static_cast<int>(layer_sizes.size());
  if (n == 0) throw std::invalid_argument("pager: no layer sizes given");
  if (window < 1 || window > n)
    throw std::invalid_argument("pager: window must be in 1.." + std::to_string(n) + ", got " + std::to_string(window));
  // Matches allocate_slots() for page-aligned layer offsets (the model file).
  if (window == n) {
    uint64_t sum = 0;
    for (uint64_t s : layer_sizes) sum += align_up(s);
    return sum;
  }
  return static_cast<uint64_t>(window) * align_up(*std::max_element(layer_sizes.begin(), layer_sizes.end()));
}

int Pager::window_for_budget(const std::vector<uint64_t>& layer_sizes, uint64_t fixed_bytes, uint64_t budget_bytes) {
  const int n = static_cast<int>(layer_sizes.size());
  if (n == 0) throw std::invalid_argument("window_for_budget: no layer sizes given");
  // Fully resident can cost less than n slots of the largest layer, so try
  // every W from the top rather than dividing.
  for (int w = n; w >= 1; --w) {
    const uint64_t need = slot_bytes_for(layer_sizes, w);
    if (fixed_bytes <= budget_bytes && need <= budget_bytes - fixed_bytes) return w;
  }
  const uint64_t minimum = fixed_bytes + slot_bytes_for(layer_sizes, 1);
  throw std::invalid_argument("window_for_budget: a budget of " + std::to_string(budget_bytes) + " bytes (" +
                              mib(budget_bytes) + ") is too small; the minimum is " + std::to_string(minimum) +
                              " bytes (" + mib(minimum) + ": one slot for the largest layer plus " +
                              std::to_string(fixed_bytes) + " fixed bytes)");
}

}  // namespace edgelut
