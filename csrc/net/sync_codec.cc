// The fp32 and int8-block encodings of partial sums (sync_codec.h).
#include "sync_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace edgelut::net {

SyncMode sync_mode_from_name(const std::string& name) {
  if (name == "fp32" || name == "f32") return SyncMode::kF32;
  if (name == "int8" || name == "q8") return SyncMode::kInt8;
  throw std::invalid_argument("sync '" + name + "' is not one of fp32, int8");
}

const char* sync_mode_name(SyncMode m) { return m == SyncMode::kF32 ? "fp32" : "int8"; }

size_t sync_bytes(SyncMode m, int64_t n) {
  if (m == SyncMode::kF32) return static_cast<size_t>(n) * 4;
  const int64_t blocks = (n + kSyncBlock - 1) / kSyncBlock;
  return static_cast<size_t>(blocks) * (4 + kSyncBlock);
}

void sync_encode(SyncMode m, const float* x, int64_t n, uint8_t* out) {
  if (m == SyncMode::kF32) {
    std::memcpy(out, x, static_cast<size_t>(n) * 4);
    return;
  }
  for (int64_t b = 0; b < n; b += kSyncBlock) {
    const int64_t len = std::min(kSyncBlock, n - b);
    float amax = 0;
    for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float scale = amax / 127.0f;
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    std::memcpy(out, &scale, 4);
    auto* q = reinterpret_cast<int8_t*>(out + 4);
    for (int64_t i = 0; i < kSyncBlock; ++i)
      q[i] = i < len ? static_cast<int8_t>(std::lrintf(std::clamp(x[b + i] * inv, -127.0f, 127.0f))) : 0;
    out += 4 + kSyncBlock;
  }
}

void sync_decode(SyncMode m, const uint8_t* p, int64_t n, float* acc, bool set) {
  if (m == SyncMode::kF32) {
    const auto* v = reinterpret_cast<const float*>(p);
    if (set)
      std::memcpy(acc, p, static_cast<size_t>(n) * 4);
    else
      for (int64_t i = 0; i < n; ++i) acc[i] += v[i];
    return;
  }
  for (int64_t b = 0; b < n; b += kSyncBlock) {
    const int64_t len = std::min(kSyncBlock, n - b);
    float scale;
    std::memcpy(&scale, p, 4);
    const auto* q = reinterpret_cast<const int8_t*>(p + 4);
    for (int64_t i = 0; i < len; ++i) acc[b + i] = (set ? 0.0f : acc[b + i]) + scale * q[i];
    p += 4 + kSyncBlock;
  }
}

}  // namespace edgelut::net
