// The coordinator's ZAP handler (ZeroMQ RFC 27): libzmq asks it, for every
// CURVE handshake on the context, whether the client's public key may join.
// Keys not listed are refused (status 400), and the refusal is logged with
// the key, so the operator sees which worker knocked.
#pragma once
#include <atomic>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "socket.h"

namespace edgelut::net {

class ZapHandler {
 public:
  // Binds inproc://zeromq.zap.01 on ctx (before any CURVE server socket binds) and serves in a thread.
  ZapHandler(Context& ctx, std::set<std::string> allowed_z85, std::function<void(const std::string&)> log);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

 private:
  void serve();
  Context& ctx_;
  std::set<std::string> allowed_;
  std::function<void(const std::string&)> log_;
  Socket sock_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace edgelut::net
