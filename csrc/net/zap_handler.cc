// The ZAP handler of zap_handler.h.
#include "zap_handler.h"

#include <vector>

namespace edgelut::net {

ZapHandler::ZapHandler(Context& ctx, std::set<std::string> allowed_z85, std::function<void(const std::string&)> log)
    : ctx_(ctx), allowed_(std::move(allowed_z85)), log_(std::move(log)), sock_(ctx, zmqc::REP) {
  sock_.bind("inproc://zeromq.zap.01");
  thread_ = std::thread([this] { serve(); });
}

ZapHandler::~ZapHandler() {
  stop_ = true;
  thread_.join();
}

void ZapHandler::serve() {
  const ZmqApi& z = ctx_.api();
  while (!stop_) {
    std::vector<std::vector<uint8_t>> req;
    try {
      Message m(z);
      if (!sock_.recv(m, 100)) continue;
      req.emplace_back(m.data(), m.data() + m.size());
      while (m.more()) {
        if (!sock_.recv(m, 1000)) break;
        req.emplace_back(m.data(), m.data() + m.size());
      }
    } catch (const std::exception&) {
      return;  // the context is going away
    }
    // version, request id, domain, address, routing id, mechanism, credentials...
    auto text = [&](size_t i) { return i < req.size() ? std::string(req[i].begin(), req[i].end()) : std::string(); };
    std::string status = "400", reason = "malformed ZAP request", user;
    if (req.size() >= 7 && text(0) == "1.0" && text(5) == "CURVE" && req[6].size() == 32) {
      char key[41] = {0};
      z.z85_encode(key, req[6].data(), 32);
      user = key;
      if (allowed_.count(user)) {
        status = "200";
        reason = "OK";
      } else {
        reason = "key not allowed";
        log_("refused a worker from " + text(3) + ": its public key " + user +
             " is not in the allowed worker keys (add it with --allowed-keys)");
      }
    } else if (req.size() >= 6) {
      log_("refused a " + text(5) + " connection from " + text(3) + ": this coordinator requires CURVE");
    }
    std::vector<std::vector<uint8_t>> reply;
    for (const std::string& s : {std::string("1.0"), text(1), status, reason, user, std::string()})
      reply.emplace_back(s.begin(), s.end());
    try {
      sock_.send(reply);
    } catch (const std::exception&) {
      return;
    }
  }
}

}  // namespace edgelut::net
