// The tensor-parallel wire format: every message is one ZeroMQ frame of a
// fixed 32-byte little-endian header and a payload.
//
//   u32 magic 'ELTP'  u16 version  u16 kind  u32 seq  u32 rank  u64 step  u64 payload_bytes
//
// `step` counts evals of the group and `seq` the all-reduces inside one, so
// a late or stray message is recognised instead of being summed. A receiver
// checks the header (magic, version, kind, the payload size against the
// frame and against a bound) before it touches the payload; libzmq itself
// drops a peer whose frame exceeds the socket's ZMQ_MAXMSGSIZE before
// allocating it. No format needs a parser beyond this file: payloads are
// raw little-endian arrays or "key=value" lines (the handshake).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace edgelut::net {

constexpr uint32_t kMagic = 0x50544c45;  // "ELTP"
constexpr uint16_t kWireVersion = 1;
constexpr size_t kHeaderBytes = 32;
constexpr uint64_t kMaxTextPayload = 64 * 1024;  // handshake, errors

enum class Kind : uint16_t {
  kHello = 1,    // worker -> coordinator: key=value description of its shard
  kWelcome = 2,  // coordinator -> worker: key=value (sync mode, timeout)
  kRefuse = 3,   // coordinator -> worker: one-line reason
  kEval = 4,     // coordinator -> worker: i64 start_pos, i64 n, n x i32 ids
  kPartial = 5,  // worker -> coordinator: a partial sum (encoding in the payload size, see sync_codec.h)
  kSum = 6,      // coordinator -> worker: the reduced sum
  kError = 7,    // worker -> coordinator: one-line reason its eval failed
  kBye = 8,      // either way: the sender is leaving
  kAbort = 9,    // coordinator -> worker: drop the current eval (another device failed)
  kHidden = 10,  // either way, layer split: the residual stream (fp32, T x dim) into / out of a layer range
};
const char* kind_name(Kind k);

struct Header {
  Kind kind = Kind::kHello;
  uint32_t seq = 0, rank = 0;
  uint64_t step = 0, payload_bytes = 0;
};

// Header followed by the payload, ready to send as one frame.
std::vector<uint8_t> encode(const Header& h, const void* payload, size_t n);

// Parses and checks the header of a frame of `size` bytes; the payload is the
// frame after the header. Returns "" or a one-line reason naming what is wrong
// (short frame, bad magic, other version, unknown kind, payload size that
// disagrees with the frame or exceeds max_payload).
std::string decode(const uint8_t* frame, size_t size, uint64_t max_payload, Header* out);

// "key=value" lines (keys and values without '=' or newlines).
std::string encode_fields(const std::map<std::string, std::string>& f);
// Returns "" or the reason the text is not well-formed fields.
std::string decode_fields(const uint8_t* p, size_t n, std::map<std::string, std::string>* out);

}  // namespace edgelut::net
