// RAII over libzmq (socket.h).
#include "socket.h"

#include <stdexcept>

namespace edgelut::net {

Context::Context(const ZmqApi& z) : z_(z), ctx_(z.ctx_new()) {
  if (!ctx_) throw std::runtime_error(zmq_error(z, "zmq_ctx_new"));
}
Context::~Context() {
  z_.ctx_term(ctx_);
}

Message::Message(const ZmqApi& z) : z_(z) { z_.msg_init(&m_); }
Message::~Message() { z_.msg_close(&m_); }
std::string Message::property(const char* name) const {
  const char* v = z_.msg_gets(&m_, name);
  return v ? v : "";
}

Socket::Socket(Context& ctx, int type) : z_(ctx.api()), s_(ctx.api().socket(ctx.get(), type)) {
  if (!s_) throw std::runtime_error(zmq_error(z_, "zmq_socket"));
  set_int(zmqc::LINGER, 0);
}
Socket::~Socket() { z_.close(s_); }

void Socket::set_int(int opt, int v) {
  if (z_.setsockopt(s_, opt, &v, sizeof v) != 0)
    throw std::runtime_error(zmq_error(z_, ("zmq_setsockopt " + std::to_string(opt)).c_str()));
}
void Socket::set_i64(int opt, int64_t v) {
  if (z_.setsockopt(s_, opt, &v, sizeof v) != 0)
    throw std::runtime_error(zmq_error(z_, ("zmq_setsockopt " + std::to_string(opt)).c_str()));
}
void Socket::set_str(int opt, const std::string& v) {
  if (z_.setsockopt(s_, opt, v.data(), v.size()) != 0)
    throw std::runtime_error(zmq_error(z_, ("zmq_setsockopt " + std::to_string(opt)).c_str()));
}

void Socket::set_common(int64_t max_frame, int timeout_ms) {
  set_i64(zmqc::MAXMSGSIZE, max_frame);
  set_int(zmqc::HEARTBEAT_IVL, 1000);
  set_int(zmqc::HEARTBEAT_TIMEOUT, timeout_ms);
  set_int(zmqc::HEARTBEAT_TTL, timeout_ms);
  set_int(zmqc::HANDSHAKE_IVL, timeout_ms);
  set_int(zmqc::SNDHWM, 0);
  set_int(zmqc::RCVHWM, 0);
}

void Socket::set_curve(const CurveKeys& keys, bool server) {
  if (keys.insecure) return;
  check_key(z_, keys.public_key, "public key");
  check_key(z_, keys.secret_key, "secret key");
  if (server) {
    set_int(zmqc::CURVE_SERVER, 1);
    set_str(zmqc::ZAP_DOMAIN, "edgelut");
    set_str(zmqc::CURVE_SECRETKEY, keys.secret_key);
    return;
  }
  check_key(z_, keys.server_key, "coordinator's public key");
  set_str(zmqc::CURVE_SERVERKEY, keys.server_key);
  set_str(zmqc::CURVE_PUBLICKEY, keys.public_key);
  set_str(zmqc::CURVE_SECRETKEY, keys.secret_key);
}

void Socket::bind(const std::string& url) {
  if (z_.bind(s_, url.c_str()) != 0) throw std::runtime_error(zmq_error(z_, ("cannot listen on " + url).c_str()));
}
void Socket::connect(const std::string& url) {
  if (z_.connect(s_, url.c_str()) != 0)
    throw std::runtime_error(zmq_error(z_, ("cannot connect to " + url).c_str()));
}
std::string Socket::last_endpoint() const {
  char buf[256];
  size_t n = sizeof buf;
  if (z_.getsockopt(s_, zmqc::LAST_ENDPOINT, buf, &n) != 0) return "";
  return std::string(buf, n > 0 && buf[n - 1] == '\0' ? n - 1 : n);
}

bool Socket::send(const std::vector<std::vector<uint8_t>>& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    const int flags = i + 1 < frames.size() ? zmqc::SNDMORE : 0;
    for (;;) {
      if (z_.send(s_, frames[i].data(), frames[i].size(), flags) >= 0) break;
      const int e = z_.errno_();
      if (e == zmqc::EINTR_) continue;
      if (e == 113 /* EHOSTUNREACH */) return false;
      throw std::runtime_error(zmq_error(z_, "zmq_send"));
    }
  }
  return true;
}

bool Socket::readable(int timeout_ms) {
  ZmqPollItem item{s_, 0, zmqc::POLLIN, 0};
  for (;;) {
    const int rc = z_.poll(&item, 1, timeout_ms);
    if (rc >= 0) return rc > 0;
    if (z_.errno_() != zmqc::EINTR_) throw std::runtime_error(zmq_error(z_, "zmq_poll"));
  }
}

bool Socket::recv(Message& m, int timeout_ms) {
  if (!readable(timeout_ms)) return false;
  for (;;) {
    if (z_.msg_recv(m.get(), s_, zmqc::DONTWAIT) >= 0) return true;
    const int e = z_.errno_();
    if (e == zmqc::EAGAIN_) return false;
    if (e != zmqc::EINTR_) throw std::runtime_error(zmq_error(z_, "zmq_msg_recv"));
  }
}

void check_key(const ZmqApi& z, const std::string& key, const std::string& what) {
  uint8_t raw[32];
  if (key.size() != 40 || !z.z85_decode(raw, key.c_str()))
    throw std::invalid_argument("the " + what + " is not a 40-character Z85 CURVE key (make one with edgelut keygen)");
}

}  // namespace edgelut::net
