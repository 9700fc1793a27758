// How partial sums travel: fp32 as they are, or int8 in blocks of 32 values
// with one fp32 scale each (36 bytes per 32 values, 3.6x fewer than fp32),
// the Q8_0 idea distributed-llama uses for its partial sums.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace edgelut::net {

enum class SyncMode { kF32 = 0, kInt8 = 1 };
constexpr int64_t kSyncBlock = 32;

SyncMode sync_mode_from_name(const std::string& name);  // "fp32" or "int8"; throws std::invalid_argument
const char* sync_mode_name(SyncMode m);

// Payload bytes of n values.
size_t sync_bytes(SyncMode m, int64_t n);
// Writes sync_bytes(m, n) bytes of x.
void sync_encode(SyncMode m, const float* x, int64_t n, uint8_t* out);
// acc[i] += value i of the payload (or = with set).
void sync_decode(SyncMode m, const uint8_t* p, int64_t n, float* acc, bool set);

}  // namespace edgelut::net
