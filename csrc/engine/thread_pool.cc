#include "thread_pool.h"

#include <memory>

#include "cpu_topology.h"

namespace edgelut {

ThreadPool::ThreadPool(int n_threads) {
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

void ThreadPool::run_part(int index) {
  const int parts = size();
  const int64_t begin = job_n_ * index / parts, end = job_n_ * (index + 1) / parts;
  if (begin >= end) return;
  try {
    (*job_)(begin, end);
  } catch (...) {
    std::lock_guard<std::mutex> lk(error_mu_);
    if (!error_) error_ = std::current_exception();
  }
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin first: the next job usually comes within microseconds.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 20000; ++spin) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load()) return;
    run_part(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  error_ = nullptr;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_release);
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
  run_part(0);
  while (pending_.load(std::memory_order_acquire) != 0) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  job_ = nullptr;
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
