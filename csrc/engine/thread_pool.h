// A persistent thread pool: workers live as long as the pool and spin briefly
// before sleeping, because decode issues hundreds of small jobs per token and
// waking a sleeping thread costs more than most of those jobs.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace edgelut {

class ThreadPool {
 public:
  // n_threads counts the calling thread; 1 means no workers.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over [0, n) split into size() contiguous parts; the
  // caller runs part 0. Returns when all parts are done. Not reentrant.
  // An exception thrown by any part is rethrown here (the first one).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop(int index);
  void run_part(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  std::exception_ptr error_;
  std::mutex error_mu_;
};

// The process-wide pool used when the caller gives none; resized on demand.
ThreadPool& default_pool(int n_threads);

// Threads to use when the user says 0: the number of cores, without the
// little cores of a big.LITTLE CPU (cpu_topology.h).
int hardware_threads();

}  // namespace edgelut
