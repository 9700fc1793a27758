// A persistent fork-join thread pool for the forward pass.
//
// Decode issues hundreds of small jobs per token, so workers spin briefly
// before sleeping: waking a sleeping thread costs more than most jobs.
//
// A job is cut into more chunks than there are threads, and every thread
// (the caller included) takes the next chunk from a shared counter until none
// is left. The split is not fixed per thread because a phone, a Pi or a
// server's event loop often takes a core away from us: with a fixed split
// the caller would wait for a descheduled worker's whole share on every job
// (measured: 2 threads decoding 8x slower than 1 at load 6 on 2 cores);
// with shared chunks the threads that do run finish the job, and a
// descheduled worker costs at most the one chunk it holds.
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

  // Runs fn(begin, end) over contiguous, disjoint ranges that cover [0, n),
  // on any of the pool's threads, each range once; fn must not assume which
  // thread runs a range nor how many ranges there are. Returns when all are
  // done. Not reentrant. The first exception thrown by fn is rethrown here
  // (the other ranges still run).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  // Takes and runs chunks of job `gen` until none is left; returns how many it ran.
  int64_t run_chunks(uint32_t gen);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  // (generation << 32) | next chunk: a thread that saw an old generation can
  // never take a chunk of a newer job.
  std::atomic<uint64_t> cursor_{0};
  std::atomic<int64_t> done_{0};  // chunks finished of the current job
  std::atomic<bool> stop_{false};
  // Written by the caller before it publishes a generation in cursor_; atomic
  // because a thread holding an old cursor may read them as the next job starts
  // (its claim then fails).
  std::atomic<const std::function<void(int64_t, int64_t)>*> job_{nullptr};
  std::atomic<int64_t> job_n_{0};
  std::atomic<int64_t> chunks_{0};
  std::exception_ptr error_;
  std::mutex error_mu_;
};

// The process-wide pool used when the caller gives none; resized on demand.
ThreadPool& default_pool(int n_threads);

// Threads to use when the user says 0: the number of cores, without the
// little cores of a big.LITTLE CPU (cpu_topology.h).
int hardware_threads();

}  // namespace edgelut
