// A worker of a tensor-parallel group: it dials out to the coordinator
// (so it needs no listening port), says which shard it holds, and then runs
// every eval the coordinator sends on its own shard, its all-reduces going
// through this link. Used by `edgelut worker` and by the C ABI's
// edgelut_worker_run, so an app can serve as a device without Python.
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "coordinator.h"

namespace edgelut::net {

struct WorkerOptions {
  LinkOptions link;
  std::string connect;                        // tcp://HOST:PORT of the coordinator
  std::map<std::string, std::string> hello;   // what this worker holds (see Coordinator's expect)
  double join_timeout_s = 30.0;               // waiting for the coordinator to answer the hello
  std::function<bool()> should_stop;          // polled every ~0.2 s: true ends serve() (C ABI's stop flag)
  std::function<void(const std::string&)> log;
};

struct WorkerStats {
  int64_t evals = 0, all_reduces = 0;
  double compute_s = 0, comm_s = 0;
  uint64_t bytes_sent = 0, bytes_received = 0;
};

class WorkerLink : public Communicator {
 public:
  explicit WorkerLink(WorkerOptions o);
  ~WorkerLink() override;

  // Connects, joins, and serves evals on engine (built with this link as its
  // communicator) until the coordinator closes the group: returns its reason.
  // Throws PeerError when the coordinator refuses, vanishes or goes silent
  // mid-eval, and std::runtime_error when stop() was called.
  std::string serve(Engine& engine);
  // Makes serve() return within ~0.2 s (thread- and signal-safe).
  void stop() { stop_ = true; }

  void all_reduce(float* data, int64_t n) override;
  // Layer split: the coordinator's stream into this worker's layers, and its output back.
  void receive_hidden(float* data, int64_t n) override;
  void pass_hidden(float* data, int64_t n) override;
  WorkerStats stats() const { return stats_; }

 private:
  struct Aborted {};
  // Waits up to timeout_ms for a frame or a monitor event; returns false on timeout.
  // Throws PeerError on a lost connection or a refused handshake.
  bool wait(Message& m, int timeout_ms);
  void await(Message& m, Kind kind, uint32_t seq, const char* what, double timeout_s);
  void monitor_event();
  void send(const Header& h, const void* p, size_t n);
  void join();

  WorkerOptions o_;
  const ZmqApi& z_;
  Context ctx_;
  std::unique_ptr<Socket> sock_, mon_;
  bool connected_ = false;
  std::atomic<bool> stop_{false};
  uint64_t step_ = 0;
  uint32_t seq_ = 0;
  uint32_t hidden_seq_ = 0;  // seq of the stream received (the answer carries it back)
  uint32_t last_seq_ = 0;    // seq of the message await() returned
  int64_t eval_tokens_ = 0;  // tokens of the current eval (a prefill's hand-off waits longer)
  uint32_t rank_ = 0;
  std::string bye_;
  std::vector<uint8_t> out_;
  WorkerStats stats_;
};

}  // namespace edgelut::net
