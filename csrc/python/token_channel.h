// Sampled tokens handed from the engine's generation loop to another thread
// without the GIL.
//
// A per-token Python callback makes the loop take the GIL once per token; with
// a server's event loop on another thread holding it, the loop then waits for
// that thread's per-token work (measured: ~5% of a SmolLM2 decode at one
// thread). With a channel the loop only appends to a vector under a mutex and
// writes one byte to a pipe the consumer polls (asyncio's add_reader, or
// select()), so the engine thread never waits for Python.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgelut {

class TokenChannel {
 public:
  TokenChannel() {
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error(std::string("token channel: pipe: ") + std::strerror(errno));
    rfd_ = fds[0];
    wfd_ = fds[1];
    for (int fd : fds) {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
      fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
  }
  ~TokenChannel() {
    close(rfd_);
    close(wfd_);
  }
  TokenChannel(const TokenChannel&) = delete;
  TokenChannel& operator=(const TokenChannel&) = delete;

  // The readable end: it has data once a token (or the close) is pending.
  int fileno() const { return rfd_; }

  // Producer side. Returns false once the consumer cancelled (the loop stops).
  bool push(int32_t token) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(token);
    }
    signal();
    return !cancelled_.load(std::memory_order_relaxed);
  }

  // No more tokens will come (the generation returned or failed).
  void finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
    }
    signal();
  }

  // Consumer side: the tokens pushed since the last drain; *finished tells
  // whether the producer is done (every token is then in this or an earlier drain).
  std::vector<int32_t> drain(bool* finished) {
    // Empty the pipe first, then clear the flag, then take the tokens. In the
    // other order a push between the clear and the read wrote a byte that the
    // read swallowed while the flag stayed set: no later push or finish wrote
    // again and the consumer waited forever (seen as a CI hang). In this
    // order every push either lands before the take below or, finding the
    // flag clear, writes a byte the consumer has not read yet.
    char buf[64];
    while (read(rfd_, buf, sizeof buf) > 0) {
    }
    signalled_.store(false, std::memory_order_seq_cst);
    std::vector<int32_t> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(pending_);
    *finished = finished_;
    return out;
  }

  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  void signal() {
    // One byte per wake-up, not per token: the pipe never fills.
    if (!signalled_.exchange(true, std::memory_order_seq_cst)) {
      const char one = 1;
      ssize_t r;
      do {
        r = write(wfd_, &one, 1);
      } while (r < 0 && errno == EINTR);
    }
  }

  int rfd_ = -1, wfd_ = -1;
  std::mutex mu_;
  std::vector<int32_t> pending_;
  bool finished_ = false;
  std::atomic<bool> signalled_{false};
  std::atomic<bool> cancelled_{false};
};

}  // namespace edgelut
