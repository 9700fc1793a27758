// The coordinator's side of a tensor-parallel group: it listens, workers dial
// out to it (so a device behind NAT can join), and it is rank 0 of the
// group's all-reduce: a star, where every worker sends its partial sum, the
// coordinator adds them in rank order and sends the sum back.
//
// The engine drives it: begin_eval() sends the tokens of an eval to every
// worker (they run the same eval on their shard), then all_reduce() runs
// twice per layer. A worker that is gone, hangs or fails makes these throw
// PeerError naming it within the timeout; the group stays usable, and a
// worker that joins again is taken back for an eval that starts at 0.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "../engine/model.h"
#include "socket.h"
#include "sync_codec.h"
#include "wire.h"
#include "zap_handler.h"

namespace edgelut::net {

// A peer left, hung, failed or broke the protocol: the message names it.
class PeerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A layer split's hand-off waits for whole layer ranges over a chunk of
// tokens, not one layer of one token: a prefill of n tokens may take up to
// this factor times the timeout (1 for decode, at most 8).
inline double hidden_wait_factor(int64_t eval_tokens) {
  return eval_tokens <= 8 ? 1.0 : eval_tokens >= 64 ? 8.0 : static_cast<double>(eval_tokens) / 8.0;
}

struct LinkOptions {
  std::string libzmq;            // path of libzmq ("" = libzmq.so.5)
  CurveKeys keys;
  double timeout_s = 5.0;        // a peer silent this long is gone
  SyncMode sync = SyncMode::kF32;
};

struct CoordinatorOptions {
  LinkOptions link;
  std::string listen;                      // tcp://0.0.0.0:PORT
  std::set<std::string> allowed_keys;      // Z85 public keys of the workers (CURVE)
  int ranks = 2;                           // devices, the coordinator included
  // What every worker's hello must say: keys and values; per rank "spec".
  std::map<std::string, std::string> expect;
  std::vector<std::string> rank_specs;     // (ranks) the shard each rank must hold
  int64_t max_values = 0;                  // largest all-reduce (prefill_chunk x dim)
  int64_t max_tokens = 0;                  // largest eval (n_ctx)
  std::function<void(const std::string&)> log;  // one line per event; default stderr
};

// Per device: what it sent and received, and the coordinator's time in the transport.
struct LinkStats {
  int64_t evals = 0, all_reduces = 0, hidden_passes = 0;
  double comm_s = 0;                       // coordinator: in begin_eval + all_reduce (waiting included)
  std::vector<uint64_t> bytes_sent;        // (ranks) by each device (the coordinator is 0)
  std::vector<uint64_t> bytes_received;    // (ranks)
};

class Coordinator : public Communicator {
 public:
  explicit Coordinator(CoordinatorOptions o);
  ~Coordinator() override;

  std::string endpoint() const { return endpoint_; }  // the bound address (port 0 resolved)
  // Blocks until every rank joined, or throws PeerError naming the missing ranks.
  void wait_for_workers(double timeout_s);
  // "rank: key or address" of the joined workers, for a status line.
  std::vector<std::string> members() const;
  int ranks() const { return o_.ranks; }

  void begin_eval(const int32_t* ids, int64_t n, int64_t start_pos) override;
  void all_reduce(float* data, int64_t n) override;
  // Layer split (a star): the stream goes to each worker in rank order and
  // comes back from it, one round trip per worker per forward pass.
  void pass_hidden(float* data, int64_t n) override;

  LinkStats stats() const { return stats_; }
  void reset_stats();
  // Tells the workers the group is closing (they exit); idempotent.
  void close();

 private:
  struct Slot {
    std::vector<uint8_t> id;  // ROUTER routing id; empty: no worker
    std::string name;         // "worker 1 (key ..., 10.0.0.2)"
    bool fresh = false;       // joined since the last eval: its cache is empty
    std::string gone;         // why it left, "" while it is in the group
  };
  void handle(Message& id, Message& body);
  void hello(const std::vector<uint8_t>& id, const std::string& who, const Header& h, const uint8_t* p);
  void poll_once(int timeout_ms);
  bool send_to(int rank, const Header& h, const void* p, size_t n);
  void abort_eval(const std::string& why);
  [[noreturn]] void fail(const std::string& why);
  int rank_of(const std::vector<uint8_t>& id) const;
  int timeout_ms() const { return static_cast<int>(o_.link.timeout_s * 1000); }

  CoordinatorOptions o_;
  const ZmqApi& z_;
  Context ctx_;
  std::unique_ptr<ZapHandler> zap_;
  std::unique_ptr<Socket> sock_;
  std::string endpoint_;
  std::vector<Slot> slots_;  // (ranks); slot 0 is the coordinator
  uint64_t step_ = 0;
  uint32_t seq_ = 0;
  int64_t n_cur_ = 0;  // values of the current all-reduce
  int64_t eval_tokens_ = 0;  // tokens of the current eval
  bool in_eval_ = false;
  // Partial sums of the current all-reduce, by rank; filled by handle().
  std::vector<std::vector<uint8_t>> partial_;
  std::vector<bool> have_;
  int hidden_from_ = -1;      // the rank whose layers the stream is in (pass_hidden), -1: none
  std::string worker_error_;  // set by handle() when a worker reported a failed eval
  int error_rank_ = -1;
  std::vector<uint8_t> out_;
  LinkStats stats_;
  bool closed_ = false;
};

}  // namespace edgelut::net
