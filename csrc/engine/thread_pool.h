// A persistent fork-join thread pool for the forward pass.
//
// Decode issues hundreds of small jobs per token, so workers spin briefly
// before sleeping: waking a sleeping thread costs more than most jobs.
//
// Each thread has a home share of every job (thread i the i-th contiguous
// part, as a fixed split would give it, so it reads the same rows every
// token), cut into 2 chunks that it takes one by one from its own part's
// cursor. A thread that runs out of home chunks takes the chunks left in the
// other parts. Why: a phone, a Pi or a server's event loop often takes a core
// away from us, and with a fixed split every job waited for a descheduled
// worker's whole share (measured: 2 threads decoding 8x slower than 1 at load
// 6 on 2 cores); here the threads that run finish the job, and a descheduled
// worker costs at most the chunk it holds. On an idle machine each thread
// takes only its own chunks, from a cursor no other thread writes.
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
  // One thread's home share: a cursor over its chunks, tagged with the job's
  // generation ((generation << 32) | next chunk) so that a thread that saw an
  // old job can never take a chunk of a newer one. Own cache line each: a
  // thread's claims on its own part touch nobody else's.
  struct alignas(64) Part {
    std::atomic<uint64_t> cursor{0};
  };

  void worker_loop(int index);
  // Takes and runs chunks of job `gen`, its own part first, then the others'.
  void run_chunks(int self, uint32_t gen);
  bool claim(int part, uint32_t gen, int64_t& chunk);

  std::vector<std::thread> workers_;
  std::vector<Part> parts_;
  std::mutex mu_;
  std::condition_variable wake_;
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int64_t> done_{0};  // chunks finished of the current job
  std::atomic<bool> stop_{false};
  // Written by the caller before it publishes a generation in the cursors;
  // atomic because a thread holding an old cursor may read them as the next
  // job starts (its claim then fails).
  std::atomic<const std::function<void(int64_t, int64_t)>*> job_{nullptr};
  std::atomic<int64_t> job_n_{0};
  std::exception_ptr error_;
  std::mutex error_mu_;
};

// The process-wide pool used when the caller gives none; resized on demand.
ThreadPool& default_pool(int n_threads);

// Threads to use when the user says 0: the number of cores, without the
// little cores of a big.LITTLE CPU (cpu_topology.h).
int hardware_threads();

}  // namespace edgelut
