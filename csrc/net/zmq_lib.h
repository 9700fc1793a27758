// libzmq loaded at run time (dlopen), so edgelut builds without zmq.h and a
// device that never joins a tensor-parallel group never loads it. Python finds
// the libzmq that pyzmq bundles (with libsodium, so CURVE works) and passes
// its path; a C app passes its own path or "" for the system's libzmq.so.5.
//
// Only the few functions and constants edgelut uses are declared here; they
// are part of libzmq's stable C API (4.x).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace edgelut::net {

// zmq_msg_t is an opaque 64-byte, 8-aligned block in the libzmq ABI.
struct alignas(8) ZmqMsg {
  unsigned char bytes[64];
};
struct ZmqPollItem {
  void* socket;
  int fd;
  short events;
  short revents;
};

namespace zmqc {
constexpr int PAIR = 0, DEALER = 5, ROUTER = 6, REP = 4;
constexpr int LINGER = 17, RCVMORE = 13, SNDHWM = 23, RCVHWM = 24, MAXMSGSIZE = 22, ROUTING_ID = 5;
constexpr int CURVE_SERVER = 47, CURVE_PUBLICKEY = 48, CURVE_SECRETKEY = 49, CURVE_SERVERKEY = 50;
constexpr int ZAP_DOMAIN = 55, ZAP_ENFORCE_DOMAIN = 93, HANDSHAKE_IVL = 66, IMMEDIATE = 39;
constexpr int HEARTBEAT_IVL = 75, HEARTBEAT_TTL = 76, HEARTBEAT_TIMEOUT = 77, ROUTER_MANDATORY = 33;
constexpr int TCP_KEEPALIVE = 34, RECONNECT_IVL = 18, LAST_ENDPOINT = 32;
constexpr int DONTWAIT = 1, SNDMORE = 2, POLLIN = 1;
constexpr int EVENT_CONNECTED = 0x0001, EVENT_DISCONNECTED = 0x0200, EVENT_HANDSHAKE_SUCCEEDED = 0x1000;
constexpr int EVENT_HANDSHAKE_FAILED_NO_DETAIL = 0x0800, EVENT_HANDSHAKE_FAILED_PROTOCOL = 0x2000,
              EVENT_HANDSHAKE_FAILED_AUTH = 0x4000, EVENT_ALL = 0xFFFF;
constexpr int EAGAIN_ = 11, EINTR_ = 4, ETERM_ = 156384765;  // ETERM = ZMQ_HAUSNUMERO + 53
}  // namespace zmqc

// The function table. load() fills it once per process; every member is set
// or load() threw.
struct ZmqApi {
  void* (*ctx_new)();
  int (*ctx_term)(void*);
  int (*ctx_shutdown)(void*);
  void* (*socket)(void*, int);
  int (*close)(void*);
  int (*setsockopt)(void*, int, const void*, size_t);
  int (*getsockopt)(void*, int, void*, size_t*);
  int (*bind)(void*, const char*);
  int (*connect)(void*, const char*);
  int (*send)(void*, const void*, size_t, int);
  int (*msg_init)(ZmqMsg*);
  int (*msg_recv)(ZmqMsg*, void*, int);
  int (*msg_close)(ZmqMsg*);
  void* (*msg_data)(ZmqMsg*);
  size_t (*msg_size)(const ZmqMsg*);
  int (*msg_more)(const ZmqMsg*);
  const char* (*msg_gets)(const ZmqMsg*, const char*);
  int (*poll)(ZmqPollItem*, int, long);
  int (*errno_)();
  const char* (*strerror)(int);
  int (*curve_keypair)(char*, char*);
  int (*curve_public)(char*, const char*);
  uint8_t* (*z85_decode)(uint8_t*, const char*);
  char* (*z85_encode)(char*, const uint8_t*, size_t);
  int (*socket_monitor)(void*, const char*, int);
  int (*has)(const char*);
  void (*version)(int*, int*, int*);
  std::string path;  // what was loaded
};

// The libzmq at `path` ("" = "libzmq.so.5"), loaded once: later calls return
// the same table (a different path after the first load is an error).
// Throws std::runtime_error naming the path and dlerror() when it cannot be
// loaded or lacks a function; the error says how to get one (pip install pyzmq).
const ZmqApi& zmq_api(const std::string& path);
// The loaded table; throws std::logic_error when zmq_api() was never called.
const ZmqApi& zmq_loaded();

// "zmq_bind: Address already in use" for the last error of a call.
std::string zmq_error(const ZmqApi& z, const char* what);

}  // namespace edgelut::net
