// Loading libzmq with dlopen and binding the functions of zmq_lib.h.
#include "zmq_lib.h"

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>

namespace edgelut::net {

namespace {
std::mutex g_mu;
ZmqApi* g_api = nullptr;  // leaked on purpose: sockets may outlive static destruction order

template <typename F>
void bind_fn(void* h, const char* name, F*& out, const std::string& path) {
  out = reinterpret_cast<F*>(dlsym(h, name));
  if (!out)
    throw std::runtime_error("libzmq at '" + path + "' lacks " + name +
                             " (edgelut needs libzmq >= 4.3; pip install pyzmq brings one)");
}
}  // namespace

const ZmqApi& zmq_api(const std::string& path_in) {
  std::lock_guard<std::mutex> lock(g_mu);
  const std::string path = path_in.empty() ? "libzmq.so.5" : path_in;
  if (g_api) {
    if (path_in.empty() || g_api->path == path) return *g_api;
    throw std::runtime_error("libzmq is already loaded from '" + g_api->path + "'; cannot load '" + path + "' too");
  }
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h)
    throw std::runtime_error("cannot load libzmq '" + path + "': " + dlerror() +
                             " (pip install pyzmq, or give the path of a libzmq.so.5 built with CURVE)");
  auto* z = new ZmqApi();
  z->path = path;
  try {
    bind_fn(h, "zmq_ctx_new", z->ctx_new, path);
    bind_fn(h, "zmq_ctx_term", z->ctx_term, path);
    bind_fn(h, "zmq_ctx_shutdown", z->ctx_shutdown, path);
    bind_fn(h, "zmq_socket", z->socket, path);
    bind_fn(h, "zmq_close", z->close, path);
    bind_fn(h, "zmq_setsockopt", z->setsockopt, path);
    bind_fn(h, "zmq_getsockopt", z->getsockopt, path);
    bind_fn(h, "zmq_bind", z->bind, path);
    bind_fn(h, "zmq_connect", z->connect, path);
    bind_fn(h, "zmq_send", z->send, path);
    bind_fn(h, "zmq_msg_init", z->msg_init, path);
    bind_fn(h, "zmq_msg_recv", z->msg_recv, path);
    bind_fn(h, "zmq_msg_close", z->msg_close, path);
    bind_fn(h, "zmq_msg_data", z->msg_data, path);
    bind_fn(h, "zmq_msg_size", z->msg_size, path);
    bind_fn(h, "zmq_msg_more", z->msg_more, path);
    bind_fn(h, "zmq_msg_gets", z->msg_gets, path);
    bind_fn(h, "zmq_poll", z->poll, path);
    bind_fn(h, "zmq_errno", z->errno_, path);
    bind_fn(h, "zmq_strerror", z->strerror, path);
    bind_fn(h, "zmq_curve_keypair", z->curve_keypair, path);
    bind_fn(h, "zmq_curve_public", z->curve_public, path);
    bind_fn(h, "zmq_z85_decode", z->z85_decode, path);
    bind_fn(h, "zmq_z85_encode", z->z85_encode, path);
    bind_fn(h, "zmq_socket_monitor", z->socket_monitor, path);
    bind_fn(h, "zmq_has", z->has, path);
    bind_fn(h, "zmq_version", z->version, path);
  } catch (...) {
    delete z;
    dlclose(h);
    throw;
  }
  int major = 0, minor = 0, patch = 0;
  z->version(&major, &minor, &patch);
  if (major < 4 || (major == 4 && minor < 3)) {
    const std::string v = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
    delete z;
    dlclose(h);
    throw std::runtime_error("libzmq at '" + path + "' is version " + v + "; edgelut needs >= 4.3");
  }
  g_api = z;
  return *g_api;
}

const ZmqApi& zmq_loaded() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_api) throw std::logic_error("libzmq was not loaded (call zmq_api first)");
  return *g_api;
}

std::string zmq_error(const ZmqApi& z, const char* what) {
  return std::string(what) + ": " + z.strerror(z.errno_());
}

}  // namespace edgelut::net
