// RAII over libzmq contexts, sockets and messages (zmq_lib.h), with the
// socket options every edgelut link sets: no linger, bounded frames,
// heartbeats that drop a silent peer, and CURVE (or plain text).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "zmq_lib.h"

namespace edgelut::net {

// The keys of one side. Keys are Z85 text (40 characters), as `edgelut keygen` writes them.
struct CurveKeys {
  bool insecure = false;       // plain text: no encryption, no authentication
  std::string public_key, secret_key;
  std::string server_key;      // a worker: the coordinator's public key
};

class Context {
 public:
  explicit Context(const ZmqApi& z);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void* get() const { return ctx_; }
  const ZmqApi& api() const { return z_; }

 private:
  const ZmqApi& z_;
  void* ctx_;
};

class Message {
 public:
  explicit Message(const ZmqApi& z);
  ~Message();
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ZmqMsg* get() { return &m_; }
  const uint8_t* data() { return static_cast<const uint8_t*>(z_.msg_data(&m_)); }
  size_t size() const { return z_.msg_size(&m_); }
  bool more() const { return z_.msg_more(&m_) != 0; }
  // A metadata property ("User-Id", "Peer-Address") or "".
  std::string property(const char* name) const;

 private:
  const ZmqApi& z_;
  ZmqMsg m_;
};

class Socket {
 public:
  Socket(Context& ctx, int type);
  ~Socket();
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  void* get() const { return s_; }

  void set_int(int opt, int v);
  void set_i64(int opt, int64_t v);
  void set_str(int opt, const std::string& v);
  // Linger 0, frames over max_frame dropped by libzmq (the peer is disconnected),
  // heartbeats every second that drop a peer silent for timeout_ms.
  void set_common(int64_t max_frame, int timeout_ms);
  // CURVE as server (coordinator, with ZAP domain "edgelut") or client (worker); nothing when insecure.
  void set_curve(const CurveKeys& keys, bool server);
  void bind(const std::string& url);
  void connect(const std::string& url);
  std::string last_endpoint() const;

  // Sends frames (all but the last with SNDMORE). Returns false with EHOSTUNREACH
  // (ROUTER_MANDATORY: the peer is gone); throws on other errors.
  bool send(const std::vector<std::vector<uint8_t>>& frames);
  bool send(const std::vector<uint8_t>& frame) { return send(std::vector<std::vector<uint8_t>>{frame}); }
  // Receives one frame into m, waiting up to timeout_ms (-1 forever). False on timeout.
  bool recv(Message& m, int timeout_ms);
  bool readable(int timeout_ms);

 private:
  const ZmqApi& z_;
  void* s_;
};

// Checks a Z85 key (40 characters that decode to 32 bytes); throws std::invalid_argument naming `what`.
void check_key(const ZmqApi& z, const std::string& key, const std::string& what);

}  // namespace edgelut::net
