// Encoding and checking the wire header of wire.h.
#include "wire.h"

#include <cstring>

namespace edgelut::net {

namespace {
void put(std::vector<uint8_t>& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kHello: return "hello";
    case Kind::kWelcome: return "welcome";
    case Kind::kRefuse: return "refuse";
    case Kind::kEval: return "eval";
    case Kind::kPartial: return "partial";
    case Kind::kSum: return "sum";
    case Kind::kError: return "error";
    case Kind::kBye: return "bye";
    case Kind::kAbort: return "abort";
    case Kind::kHidden: return "hidden";
  }
  return "unknown";
}

std::vector<uint8_t> encode(const Header& h, const void* payload, size_t n) {
  std::vector<uint8_t> b(kHeaderBytes + n);
  put(b, 0, kMagic, 4);
  put(b, 4, kWireVersion, 2);
  put(b, 6, static_cast<uint16_t>(h.kind), 2);
  put(b, 8, h.seq, 4);
  put(b, 12, h.rank, 4);
  put(b, 16, h.step, 8);
  put(b, 24, n, 8);
  if (n) std::memcpy(b.data() + kHeaderBytes, payload, n);
  return b;
}

std::string decode(const uint8_t* frame, size_t size, uint64_t max_payload, Header* out) {
  if (size < kHeaderBytes)
    return "a " + std::to_string(size) + "-byte message is shorter than the " + std::to_string(kHeaderBytes) +
           "-byte header (truncated)";
  if (get(frame, 4) != kMagic) return "a message without the edgelut magic (not an edgelut peer)";
  const uint64_t version = get(frame + 4, 2);
  if (version != kWireVersion)
    return "wire version " + std::to_string(version) + ", this edgelut speaks " + std::to_string(kWireVersion);
  const uint64_t kind = get(frame + 6, 2);
  if (kind < 1 || kind > static_cast<uint64_t>(Kind::kHidden)) return "unknown message kind " + std::to_string(kind);
  Header h;
  h.kind = static_cast<Kind>(kind);
  h.seq = static_cast<uint32_t>(get(frame + 8, 4));
  h.rank = static_cast<uint32_t>(get(frame + 12, 4));
  h.step = get(frame + 16, 8);
  h.payload_bytes = get(frame + 24, 8);
  if (h.payload_bytes > max_payload)
    return std::string("a ") + kind_name(h.kind) + " message announces " + std::to_string(h.payload_bytes) +
           " payload bytes, over the bound of " + std::to_string(max_payload);
  if (h.payload_bytes != size - kHeaderBytes)
    return std::string("a ") + kind_name(h.kind) + " message announces " + std::to_string(h.payload_bytes) +
           " payload bytes but carries " + std::to_string(size - kHeaderBytes) + " (truncated or padded)";
  *out = h;
  return "";
}

std::string encode_fields(const std::map<std::string, std::string>& f) {
  std::string s;
  for (const auto& [k, v] : f) s += k + "=" + v + "\n";
  return s;
}

std::string decode_fields(const uint8_t* p, size_t n, std::map<std::string, std::string>* out) {
  const std::string s(reinterpret_cast<const char*>(p), n);
  size_t at = 0;
  while (at < s.size()) {
    size_t end = s.find('\n', at);
    if (end == std::string::npos) end = s.size();
    const std::string line = s.substr(at, end - at);
    const size_t eq = line.find('=');
    if (eq == std::string::npos || eq == 0) return "a handshake line without key=value: '" + line.substr(0, 60) + "'";
    (*out)[line.substr(0, eq)] = line.substr(eq + 1);
    at = end + 1;
  }
  return "";
}

}  // namespace edgelut::net
