// The worker link of worker.h.
#include "worker.h"

#include <chrono>
#include <cstdio>
#include <cstring>

namespace edgelut::net {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}
}  // namespace

WorkerLink::WorkerLink(WorkerOptions o) : o_(std::move(o)), z_(zmq_api(o_.link.libzmq)), ctx_(z_) {
  if (!o_.log) o_.log = [](const std::string& s) { std::fprintf(stderr, "edgelut worker: %s\n", s.c_str()); };
  if (o_.link.timeout_s <= 0) throw std::invalid_argument("timeout must be positive");
  if (o_.connect.rfind("tcp://", 0) != 0 && o_.connect.rfind("ipc://", 0) != 0)
    throw std::invalid_argument("--connect '" + o_.connect + "' is not a tcp://HOST:PORT address");
  rank_ = static_cast<uint32_t>(std::atoi(o_.hello["rank"].c_str()));
}

WorkerLink::~WorkerLink() = default;

void WorkerLink::send(const Header& h, const void* p, size_t n) {
  std::vector<uint8_t> f = encode(h, p, n);
  stats_.bytes_sent += f.size();
  sock_->send(f);
}

void WorkerLink::monitor_event() {
  Message ev(z_), addr(z_);
  if (!mon_->recv(ev, 0)) return;
  if (ev.more()) mon_->recv(addr, 100);
  if (ev.size() < 6) return;
  uint16_t event;
  uint32_t value;
  std::memcpy(&event, ev.data(), 2);
  std::memcpy(&value, ev.data() + 2, 4);
  if (event == zmqc::EVENT_HANDSHAKE_SUCCEEDED) connected_ = true;
  if (event == zmqc::EVENT_HANDSHAKE_FAILED_AUTH)
    throw PeerError("the coordinator at " + o_.connect + " refused this worker's key (ZAP status " +
                    std::to_string(value) + "): add its public key " + o_.link.keys.public_key +
                    " to the coordinator's allowed keys");
  if (event == zmqc::EVENT_HANDSHAKE_FAILED_PROTOCOL || event == zmqc::EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    throw PeerError("the handshake with the coordinator at " + o_.connect +
                    " failed (a wrong coordinator key, or only one side runs --insecure)");
  if (event == zmqc::EVENT_DISCONNECTED && connected_)
    throw PeerError("lost the connection to the coordinator at " + o_.connect);
}

bool WorkerLink::wait(Message& m, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (stop_ || (o_.should_stop && o_.should_stop())) throw std::runtime_error("worker stopped");
    ZmqPollItem items[2] = {{sock_->get(), 0, zmqc::POLLIN, 0}, {mon_->get(), 0, zmqc::POLLIN, 0}};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    const long step = timeout_ms < 0 ? 200 : std::max<long>(0, std::min<long>(200, left));
    const int rc = z_.poll(items, 2, step);
    if (rc < 0 && z_.errno_() != zmqc::EINTR_) throw std::runtime_error(zmq_error(z_, "zmq_poll"));
    if (rc > 0 && (items[1].revents & zmqc::POLLIN)) monitor_event();
    if (rc > 0 && (items[0].revents & zmqc::POLLIN) && sock_->recv(m, 0)) return true;
    if (timeout_ms >= 0 && Clock::now() >= deadline) return false;
  }
}

void WorkerLink::join() {
  sock_ = std::make_unique<Socket>(ctx_, zmqc::DEALER);
  const int tmo = static_cast<int>(o_.link.timeout_s * 1000);
  // The biggest frame a coordinator sends: an eval of n_ctx tokens or a sum of a prefill chunk.
  const int64_t n_ctx = std::atoll(o_.hello["n_ctx"].c_str()), values = std::atoll(o_.hello["max_values"].c_str());
  sock_->set_common(static_cast<int64_t>(kHeaderBytes) + std::max<int64_t>({16 + 4 * n_ctx, 4 * values + 64,
                                                                            static_cast<int64_t>(kMaxTextPayload)}),
                    tmo);
  sock_->set_curve(o_.link.keys, false);
  const std::string mon_url = "inproc://edgelut-worker-monitor";
  if (z_.socket_monitor(sock_->get(), mon_url.c_str(), zmqc::EVENT_ALL) != 0)
    throw std::runtime_error(zmq_error(z_, "zmq_socket_monitor"));
  mon_ = std::make_unique<Socket>(ctx_, zmqc::PAIR);
  mon_->connect(mon_url);
  sock_->connect(o_.connect);
  const std::string hello = encode_fields(o_.hello);
  send(Header{Kind::kHello, 0, rank_, 0, 0}, hello.data(), hello.size());
  Message m(z_);
  if (!wait(m, static_cast<int>(o_.join_timeout_s * 1000)))
    throw PeerError("no answer from a coordinator at " + o_.connect + " within " + seconds(o_.join_timeout_s) +
                    " (is it running and listening there?)");
  Header h;
  const std::string bad = decode(m.data(), m.size(), kMaxTextPayload, &h);
  if (!bad.empty()) throw PeerError("the coordinator at " + o_.connect + " answered with " + bad);
  const std::string text(reinterpret_cast<const char*>(m.data() + kHeaderBytes), h.payload_bytes);
  if (h.kind == Kind::kRefuse) throw PeerError(text);
  if (h.kind != Kind::kWelcome)
    throw PeerError(std::string("the coordinator answered the hello with a ") + kind_name(h.kind) + " message");
  std::map<std::string, std::string> f;
  const std::string err = decode_fields(m.data() + kHeaderBytes, h.payload_bytes, &f);
  if (!err.empty()) throw PeerError("the coordinator's welcome is malformed: " + err);
  o_.link.sync = sync_mode_from_name(f["sync"]);
  const double t = std::atof(f["timeout_ms"].c_str()) / 1000.0;
  if (t > 0) o_.link.timeout_s = t;
  connected_ = true;
  o_.log("joined the group at " + o_.connect + " as rank " + std::to_string(rank_) + " (" +
         sync_mode_name(o_.link.sync) + " sync)");
}

std::string WorkerLink::serve(Engine& engine) {
  join();
  Message m(z_);
  std::vector<int32_t> ids;
  for (;;) {
    if (!wait(m, -1)) continue;
    stats_.bytes_received += m.size();
    Header h;
    const std::string bad = decode(m.data(), m.size(), m.size(), &h);
    if (!bad.empty()) throw PeerError("the coordinator sent " + bad);
    const uint8_t* p = m.data() + kHeaderBytes;
    if (h.kind == Kind::kBye) return std::string(reinterpret_cast<const char*>(p), h.payload_bytes);
    if (h.kind != Kind::kEval) continue;  // a stale sum or abort of an eval already given up
    int64_t start = 0, n = 0;
    if (h.payload_bytes >= 16) {
      std::memcpy(&start, p, 8);
      std::memcpy(&n, p + 8, 8);
    }
    step_ = h.step;
    seq_ = 0;
    if (h.payload_bytes < 16 || n < 1 || h.payload_bytes != 16 + 4 * static_cast<uint64_t>(n)) {
      const std::string e = "an eval message of " + std::to_string(h.payload_bytes) + " bytes is malformed";
      send(Header{Kind::kError, 0, rank_, step_, 0}, e.data(), e.size());
      continue;
    }
    ids.resize(n);
    std::memcpy(ids.data(), p + 16, 4 * n);
    eval_tokens_ = n;
    const auto t0 = Clock::now();
    const double comm0 = stats_.comm_s;
    try {
      engine.eval(ids.data(), n, start, nullptr, false);
    } catch (const Aborted&) {
      if (!bye_.empty()) return bye_;
      continue;
    } catch (const PeerError&) {
      throw;
    } catch (const std::exception& e) {
      const std::string msg = e.what();
      send(Header{Kind::kError, 0, rank_, step_, 0}, msg.data(), msg.size());
      o_.log("eval failed: " + msg);
    }
    ++stats_.evals;
    stats_.compute_s += since(t0) - (stats_.comm_s - comm0);
  }
}

// The next message of the current eval of kind `kind` (and sequence `seq`, when
// not 0) into m; a bye or an abort ends the eval (Aborted), silence past the
// timeout is the coordinator's failure.
void WorkerLink::await(Message& m, Kind kind, uint32_t seq, const char* what, double timeout_s) {
  const int tmo = static_cast<int>(timeout_s * 1000);
  for (;;) {
    if (!wait(m, tmo))
      throw PeerError("the coordinator at " + o_.connect + " sent no " + what + " within " + seconds(timeout_s) +
                      ": it died, hung or the link is down");
    stats_.bytes_received += m.size();
    Header h;
    const std::string bad = decode(m.data(), m.size(), m.size(), &h);
    if (!bad.empty()) throw PeerError("the coordinator sent " + bad);
    if (h.kind == Kind::kBye) {
      bye_.assign(reinterpret_cast<const char*>(m.data() + kHeaderBytes), h.payload_bytes);
      throw Aborted{};
    }
    if (h.step != step_) continue;  // an older eval's
    if (h.kind == Kind::kAbort) throw Aborted{};
    if (h.kind != kind || (seq != 0 && h.seq != seq)) continue;
    last_seq_ = h.seq;
    return;
  }
}

void WorkerLink::all_reduce(float* data, int64_t n) {
  const auto t0 = Clock::now();
  ++seq_;
  out_.resize(sync_bytes(o_.link.sync, n));
  sync_encode(o_.link.sync, data, n, out_.data());
  send(Header{Kind::kPartial, seq_, rank_, step_, 0}, out_.data(), out_.size());
  Message m(z_);
  await(m, Kind::kSum, seq_, "sum", o_.link.timeout_s);
  if (m.size() - kHeaderBytes != out_.size())
    throw PeerError("the coordinator sent a sum of " + std::to_string(m.size() - kHeaderBytes) +
                    " bytes, expected " + std::to_string(out_.size()));
  sync_decode(o_.link.sync, m.data() + kHeaderBytes, n, data, true);
  ++stats_.all_reduces;
  stats_.comm_s += since(t0);
}

void WorkerLink::receive_hidden(float* data, int64_t n) {
  const auto t0 = Clock::now();
  Message m(z_);
  // The devices before this one run their layers over the whole chunk first.
  await(m, Kind::kHidden, 0, "hidden state", o_.link.timeout_s * hidden_wait_factor(eval_tokens_));
  if (m.size() - kHeaderBytes != 4 * static_cast<uint64_t>(n))
    throw PeerError("the coordinator sent a hidden state of " + std::to_string(m.size() - kHeaderBytes) +
                    " bytes, expected " + std::to_string(4 * n));
  std::memcpy(data, m.data() + kHeaderBytes, 4 * static_cast<size_t>(n));
  hidden_seq_ = last_seq_;
  stats_.comm_s += since(t0);
}

void WorkerLink::pass_hidden(float* data, int64_t n) {
  const auto t0 = Clock::now();
  send(Header{Kind::kHidden, hidden_seq_, rank_, step_, 0}, data, 4 * static_cast<size_t>(n));
  stats_.comm_s += since(t0);
}

}  // namespace edgelut::net
