#include "thread_pool.h"

#include <memory>

#include "cpu_topology.h"

namespace edgelut {

namespace {
// Chunks per home share: enough that the threads that run can absorb the share
// of one that does not, few enough that an idle machine pays little for them.
constexpr int64_t kChunksPerThread = 2;

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : parts_(static_cast<size_t>(n_threads < 1 ? 1 : n_threads)) {
  const int n = n_threads < 1 ? 1 : n_threads;
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

bool ThreadPool::claim(int part, uint32_t gen, int64_t& chunk) {
  std::atomic<uint64_t>& cursor = parts_[static_cast<size_t>(part)].cursor;
  uint64_t cur = cursor.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(cur >> 32) != gen) return false;  // a newer job (or none) owns it
    const int64_t i = static_cast<int64_t>(cur & 0xffffffffu);
    if (i >= kChunksPerThread) return false;
    if (cursor.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      chunk = part * kChunksPerThread + i;
      return true;
    }
  }
}

void ThreadPool::run_chunks(int self, uint32_t gen) {
  const int parts = size();
  int64_t ran = 0;
  for (int k = 0; k < parts; ++k) {
    const int part = (self + k) % parts;  // home first, then the others in turn
    int64_t c;
    while (claim(part, gen, c)) {
      // Ours now: the job cannot change before this chunk is counted done.
      const int64_t n = job_n_.load(std::memory_order_relaxed);
      const int64_t total = kChunksPerThread * parts;
      const int64_t begin = n * c / total, end = n * (c + 1) / total;
      if (begin < end) {
        try {
          (*job_.load(std::memory_order_relaxed))(begin, end);
        } catch (...) {
          std::lock_guard<std::mutex> lk(error_mu_);
          if (!error_) error_ = std::current_exception();
        }
      }
      ++ran;
    }
  }
  // One count per thread and job, not per chunk: the caller waits on it.
  if (ran) done_.fetch_add(ran, std::memory_order_acq_rel);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin first: the next job usually comes within microseconds.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 20000; ++spin) {
      cpu_relax();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load()) return;
    run_chunks(index, static_cast<uint32_t>(gen));
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  job_.store(&fn, std::memory_order_relaxed);
  job_n_.store(n, std::memory_order_relaxed);
  error_ = nullptr;
  done_.store(0, std::memory_order_relaxed);
  // Only this thread (and the destructor) moves the generation. The cursors
  // go first, with release, so a thread that takes a chunk of this job also
  // sees the job above; the generation then wakes the workers.
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  const uint64_t start = static_cast<uint64_t>(static_cast<uint32_t>(gen)) << 32;
  for (Part& p : parts_) p.cursor.store(start, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.store(gen, std::memory_order_release);
  }
  wake_.notify_all();
  run_chunks(0, static_cast<uint32_t>(gen));
  // Every chunk is taken; wait for the ones other threads still run. Yield
  // after a short spin: the thread we wait for may be queued on our core.
  const int64_t chunks = kChunksPerThread * size();
  for (int spin = 0; done_.load(std::memory_order_acquire) != chunks; ++spin) {
    if (spin < 2000)
      cpu_relax();
    else
      std::this_thread::yield();
  }
  job_.store(nullptr, std::memory_order_relaxed);
  if (error_) std::rethrow_exception(error_);
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  const int all = n == 0 ? 1 : static_cast<int>(n);
#if defined(__linux__)
  const int fast = fast_core_count("/sys/devices/system/cpu");
  if (fast > 0 && fast < all) return fast;
#endif
  return all;
}

ThreadPool& default_pool(int n_threads) {
  static std::unique_ptr<ThreadPool> pool;
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  const int want = n_threads <= 0 ? hardware_threads() : n_threads;
  if (!pool || pool->size() != want) pool = std::make_unique<ThreadPool>(want);
  return *pool;
}

}  // namespace edgelut
