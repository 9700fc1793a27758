// The coordinator of coordinator.h: handshake, eval broadcast, star all-reduce, faults.
#include "coordinator.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace edgelut::net {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(0, left));
}
Clock::time_point after(double s) {
  return Clock::now() + std::chrono::microseconds(static_cast<int64_t>(s * 1e6));
}
std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}
// The handshake fields a worker must agree on, with the words an error uses.
const char* field_words(const std::string& key) {
  if (key == "model") return "model";
  if (key == "layers") return "layer count";
  if (key == "format") return "weight format";
  if (key == "prefill_chunk") return "prefill chunk";
  return key.c_str();
}
}  // namespace

Coordinator::Coordinator(CoordinatorOptions o) : o_(std::move(o)), z_(zmq_api(o_.link.libzmq)), ctx_(z_) {
  if (!o_.log) o_.log = [](const std::string& s) { std::fprintf(stderr, "edgelut: %s\n", s.c_str()); };
  if (o_.ranks < 2) throw std::invalid_argument("a tensor-parallel group needs at least 2 devices, got " +
                                                std::to_string(o_.ranks));
  if (static_cast<int>(o_.rank_specs.size()) != o_.ranks)
    throw std::invalid_argument("the coordinator needs one shard spec per rank");
  if (o_.link.timeout_s <= 0) throw std::invalid_argument("timeout must be positive");
  if (!o_.link.keys.insecure) {
    if (o_.allowed_keys.empty())
      throw std::invalid_argument(
          "no allowed worker keys: give the workers' public keys (--allowed-keys FILE) or run --insecure");
    for (const std::string& k : o_.allowed_keys) check_key(z_, k, "allowed worker key '" + k + "'");
    zap_ = std::make_unique<ZapHandler>(ctx_, o_.allowed_keys, o_.log);
  }
  sock_ = std::make_unique<Socket>(ctx_, zmqc::ROUTER);
  const int64_t biggest = std::max<int64_t>({4 * o_.max_values + 64, 16 + 4 * o_.max_tokens,
                                             static_cast<int64_t>(kMaxTextPayload)});
  sock_->set_common(static_cast<int64_t>(kHeaderBytes) + biggest, timeout_ms());
  sock_->set_int(zmqc::ROUTER_MANDATORY, 1);
  sock_->set_curve(o_.link.keys, true);
  sock_->bind(o_.listen);
  endpoint_ = sock_->last_endpoint();
  slots_.resize(o_.ranks);
  partial_.resize(o_.ranks);
  have_.resize(o_.ranks);
  reset_stats();
}

Coordinator::~Coordinator() {
  try {
    close();
  } catch (...) {
  }
}

void Coordinator::reset_stats() {
  stats_ = LinkStats{};
  stats_.bytes_sent.assign(o_.ranks, 0);
  stats_.bytes_received.assign(o_.ranks, 0);
}

std::vector<std::string> Coordinator::members() const {
  std::vector<std::string> out;
  for (int r = 1; r < o_.ranks; ++r)
    if (!slots_[r].id.empty() && slots_[r].gone.empty()) out.push_back(slots_[r].name);
  return out;
}

int Coordinator::rank_of(const std::vector<uint8_t>& id) const {
  for (int r = 1; r < o_.ranks; ++r)
    if (slots_[r].id == id) return r;
  return -1;
}

bool Coordinator::send_to(int rank, const Header& h, const void* p, size_t n) {
  std::vector<uint8_t> frame = encode(h, p, n);
  stats_.bytes_sent[0] += frame.size();
  stats_.bytes_received[rank] += frame.size();
  return sock_->send({slots_[rank].id, frame});
}

void Coordinator::poll_once(int timeout_ms) {
  Message id(z_), body(z_);
  if (!sock_->recv(id, timeout_ms)) return;
  if (!id.more()) return;  // a ROUTER always delivers the routing id first
  if (!sock_->recv(body, 1000)) return;
  handle(id, body);
  while (body.more()) sock_->recv(body, 1000);  // extra frames: not ours, dropped
}

void Coordinator::handle(Message& idm, Message& body) {
  std::vector<uint8_t> id(idm.data(), idm.data() + idm.size());
  const int rank = rank_of(id);
  std::string who = body.property("User-Id");
  who = who.empty() ? body.property("Peer-Address") : "key " + who.substr(0, 8) + "..";
  Header h;
  const uint64_t bound = std::max<uint64_t>(sync_bytes(SyncMode::kF32, o_.max_values) + 64, kMaxTextPayload);
  const std::string bad = decode(body.data(), body.size(), bound, &h);
  if (rank > 0) stats_.bytes_sent[rank] += body.size();
  if (!bad.empty()) {
    o_.log("dropped a message from " + (rank > 0 ? slots_[rank].name : who) + ": " + bad);
    if (rank > 0) {
      slots_[rank].gone = "it sent " + bad;
      worker_error_ = slots_[rank].name + " broke the protocol: " + bad;
      error_rank_ = rank;
    }
    return;
  }
  const uint8_t* p = body.data() + kHeaderBytes;
  const std::string text(reinterpret_cast<const char*>(p), std::min<uint64_t>(h.payload_bytes, 500));
  switch (h.kind) {
    case Kind::kHello:
      hello(id, who, h, p);
      return;
    case Kind::kPartial:
      if (rank <= 0 || !in_eval_ || h.step != step_ || h.seq != seq_) return;  // stale: an aborted eval's
      if (h.payload_bytes != sync_bytes(o_.link.sync, n_cur_)) {
        worker_error_ = slots_[rank].name + " sent a partial sum of " + std::to_string(h.payload_bytes) +
                        " bytes, expected " + std::to_string(sync_bytes(o_.link.sync, n_cur_));
        error_rank_ = rank;
        return;
      }
      partial_[rank].assign(p, p + h.payload_bytes);
      have_[rank] = true;
      return;
    case Kind::kHidden:
      if (rank <= 0 || !in_eval_ || h.step != step_ || h.seq != seq_ || rank != hidden_from_) return;  // stale
      if (h.payload_bytes != 4 * static_cast<uint64_t>(n_cur_)) {
        worker_error_ = slots_[rank].name + " sent a hidden state of " + std::to_string(h.payload_bytes) +
                        " bytes, expected " + std::to_string(4 * n_cur_);
        error_rank_ = rank;
        return;
      }
      partial_[rank].assign(p, p + h.payload_bytes);
      have_[rank] = true;
      return;
    case Kind::kError:
      if (rank <= 0) return;
      if (in_eval_ && h.step == step_) {
        worker_error_ = slots_[rank].name + " failed: " + text;
        error_rank_ = rank;
      }
      return;
    case Kind::kBye:
      if (rank <= 0) return;
      slots_[rank].gone = "it left the group (" + (text.empty() ? std::string("bye") : text) + ")";
      o_.log(slots_[rank].name + " left the group");
      if (in_eval_) {
        worker_error_ = slots_[rank].name + " left the group mid-eval";
        error_rank_ = rank;
      }
      return;
    default:
      o_.log(std::string("ignored a ") + kind_name(h.kind) + " message from " + who);
  }
}

void Coordinator::hello(const std::vector<uint8_t>& id, const std::string& who, const Header& h,
                        const uint8_t* p) {
  std::map<std::string, std::string> f;
  std::string reason = decode_fields(p, h.payload_bytes, &f);
  int rank = -1;
  if (reason.empty()) {
    if (f["ranks"] != std::to_string(o_.ranks)) {
      reason = "it is one of " + f["ranks"] + " shards, this group has " + std::to_string(o_.ranks) + " devices";
    } else {
      rank = std::atoi(f["rank"].c_str());
      if (rank < 1 || rank >= o_.ranks || f["rank"] != std::to_string(rank))
        reason = "its rank '" + f["rank"] + "' is not a worker rank 1.." + std::to_string(o_.ranks - 1);
    }
  }
  if (reason.empty()) {
    for (const auto& [key, want] : o_.expect)
      if (f[key] != want) {
        reason = std::string("its ") + field_words(key) + " is '" + f[key] + "', the coordinator's is '" + want + "'";
        break;
      }
  }
  if (reason.empty() && f["spec"] != o_.rank_specs[rank])
    reason = "it holds shard '" + f["spec"] + "', rank " + std::to_string(rank) + " must hold '" +
             o_.rank_specs[rank] + "'";
  if (reason.empty() && !slots_[rank].id.empty() && slots_[rank].gone.empty() && slots_[rank].id != id)
    reason = "rank " + std::to_string(rank) + " is already served by " + slots_[rank].name;
  if (!reason.empty()) {
    o_.log("refused a worker (" + who + "): " + reason);
    const std::string msg = "refused by the coordinator: " + reason;
    Header r{Kind::kRefuse, 0, 0, 0, 0};
    sock_->send({id, encode(r, msg.data(), msg.size())});
    return;
  }
  Slot& s = slots_[rank];
  s.id = id;
  s.name = "worker " + std::to_string(rank) + " (" + who + ")";
  s.fresh = true;
  s.gone.clear();
  const std::string w = encode_fields({{"sync", sync_mode_name(o_.link.sync)},
                                       {"timeout_ms", std::to_string(timeout_ms())}});
  send_to(rank, Header{Kind::kWelcome, 0, 0, 0, 0}, w.data(), w.size());
  o_.log(s.name + " joined as rank " + std::to_string(rank) + " of " + std::to_string(o_.ranks));
}

void Coordinator::wait_for_workers(double timeout_s) {
  const auto deadline = after(timeout_s);
  for (;;) {
    std::string missing;
    for (int r = 1; r < o_.ranks; ++r)
      if (slots_[r].id.empty() || !slots_[r].gone.empty()) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    if (missing.empty()) return;
    const int left = ms_left(deadline);
    if (left == 0)
      throw PeerError("waited " + seconds(timeout_s) + " for workers at " + endpoint_ + "; rank(s) " + missing +
                      " of " + std::to_string(o_.ranks) + " did not join (start edgelut worker ... --connect " +
                      endpoint_ + ")");
    poll_once(std::min(left, 200));
  }
}

void Coordinator::abort_eval(const std::string& why) {
  in_eval_ = false;
  for (int r = 1; r < o_.ranks; ++r)
    if (!slots_[r].id.empty() && slots_[r].gone.empty())
      if (!send_to(r, Header{Kind::kAbort, seq_, 0, step_, 0}, why.data(), why.size()))
        slots_[r].gone = "unreachable";
}

void Coordinator::fail(const std::string& why) {
  abort_eval(why);
  worker_error_.clear();
  throw PeerError(why);
}

void Coordinator::begin_eval(const int32_t* ids, int64_t n, int64_t start_pos) {
  if (closed_) throw PeerError("the tensor-parallel group was closed");
  const auto t0 = Clock::now();
  in_eval_ = false;
  while (sock_->readable(0)) poll_once(0);  // hellos, byes and stale partials since the last eval
  // A gone device gets one timeout to come back.
  const auto deadline = after(o_.link.timeout_s);
  std::string missing;
  for (;;) {
    missing.clear();
    for (int r = 1; r < o_.ranks; ++r)
      if (slots_[r].id.empty() || !slots_[r].gone.empty())
        missing += (missing.empty() ? "" : "; ") +
                   (slots_[r].name.empty() ? "rank " + std::to_string(r) + " never joined"
                                           : slots_[r].name + " is gone: " + slots_[r].gone);
    if (missing.empty() || ms_left(deadline) == 0) break;
    poll_once(std::min(ms_left(deadline), 200));
  }
  if (!missing.empty())
    throw PeerError("device missing (" + missing + "); start its worker again (edgelut worker ... --connect " +
                    endpoint_ + ") and retry");
  for (int r = 1; r < o_.ranks; ++r)
    if (slots_[r].fresh && start_pos > 0)
      throw PeerError(slots_[r].name + " joined with an empty cache; the conversation restarts (evaluate from position 0)");
  if (n > o_.max_tokens) throw std::invalid_argument("eval of " + std::to_string(n) + " tokens exceeds the group's bound");
  ++step_;
  seq_ = 0;
  eval_tokens_ = n;
  worker_error_.clear();
  std::vector<uint8_t> payload(16 + 4 * n);
  std::memcpy(payload.data(), &start_pos, 8);
  std::memcpy(payload.data() + 8, &n, 8);
  std::memcpy(payload.data() + 16, ids, 4 * n);
  in_eval_ = true;
  for (int r = 1; r < o_.ranks; ++r) {
    if (!send_to(r, Header{Kind::kEval, 0, 0, step_, 0}, payload.data(), payload.size())) {
      slots_[r].gone = "its connection closed";
      fail(slots_[r].name + " is unreachable (its connection closed)");
    }
    slots_[r].fresh = false;
  }
  ++stats_.evals;
  stats_.comm_s += since(t0);
}

void Coordinator::all_reduce(float* data, int64_t n) {
  const auto t0 = Clock::now();
  if (!in_eval_) throw PeerError("all_reduce outside an eval (the group aborted this eval)");
  ++seq_;
  n_cur_ = n;
  std::fill(have_.begin(), have_.end(), false);
  const auto deadline = after(o_.link.timeout_s);
  for (;;) {
    if (!worker_error_.empty()) fail(worker_error_);
    std::string missing;
    for (int r = 1; r < o_.ranks; ++r)
      if (!have_[r]) missing += (missing.empty() ? "" : ", ") + slots_[r].name;
    if (missing.empty()) break;
    if (ms_left(deadline) == 0) {
      for (int r = 1; r < o_.ranks; ++r)
        if (!have_[r]) slots_[r].gone = "silent for " + seconds(o_.link.timeout_s) + " mid-eval";
      fail(missing + " sent no partial sum within " + seconds(o_.link.timeout_s) + " (all-reduce " +
           std::to_string(seq_) + " of eval " + std::to_string(step_) + "): it died, hung or lost its link");
    }
    poll_once(ms_left(deadline));
  }
  // Rank order, so every run adds in the same order.
  for (int r = 1; r < o_.ranks; ++r) sync_decode(o_.link.sync, partial_[r].data(), n, data, false);
  out_.resize(sync_bytes(o_.link.sync, n));
  sync_encode(o_.link.sync, data, n, out_.data());
  // int8: the coordinator continues from the values the workers decode, so every rank agrees.
  if (o_.link.sync == SyncMode::kInt8) sync_decode(o_.link.sync, out_.data(), n, data, true);
  for (int r = 1; r < o_.ranks; ++r)
    if (!send_to(r, Header{Kind::kSum, seq_, 0, step_, 0}, out_.data(), out_.size())) {
      slots_[r].gone = "its connection closed";
      fail(slots_[r].name + " is unreachable (its connection closed)");
    }
  ++stats_.all_reduces;
  stats_.comm_s += since(t0);
}

void Coordinator::pass_hidden(float* data, int64_t n) {
  const auto t0 = Clock::now();
  if (!in_eval_) throw PeerError("pass_hidden outside an eval (the group aborted this eval)");
  n_cur_ = n;
  // fp32 always: the stream goes on exactly, so a layer split computes what one device does.
  for (int r = 1; r < o_.ranks; ++r) {
    ++seq_;
    have_[r] = false;
    hidden_from_ = r;
    if (!send_to(r, Header{Kind::kHidden, seq_, 0, step_, 0}, data, 4 * static_cast<size_t>(n))) {
      slots_[r].gone = "its connection closed";
      fail(slots_[r].name + " is unreachable (its connection closed)");
    }
    const double wait_s = o_.link.timeout_s * hidden_wait_factor(eval_tokens_);
    const auto deadline = after(wait_s);
    while (!have_[r]) {
      if (!worker_error_.empty()) fail(worker_error_);
      if (ms_left(deadline) == 0) {
        slots_[r].gone = "silent for " + seconds(wait_s) + " mid-eval";
        fail(slots_[r].name + " sent no hidden state within " + seconds(wait_s) + " (its layers, pass " +
             std::to_string(seq_) + " of eval " + std::to_string(step_) + "): it died, hung or lost its link");
      }
      poll_once(ms_left(deadline));
    }
    std::memcpy(data, partial_[r].data(), 4 * static_cast<size_t>(n));
    ++stats_.hidden_passes;
  }
  hidden_from_ = -1;
  stats_.comm_s += since(t0);
}

void Coordinator::close() {
  if (closed_) return;
  closed_ = true;
  in_eval_ = false;
  const std::string why = "the coordinator closed the group";
  for (int r = 1; r < o_.ranks; ++r)
    if (!slots_[r].id.empty() && slots_[r].gone.empty())
      send_to(r, Header{Kind::kBye, 0, 0, step_, 0}, why.data(), why.size());
  sock_->set_int(zmqc::LINGER, 500);  // let the byes out
}

}  // namespace edgelut::net
