// CRC-32 (IEEE 802.3, the polynomial zlib uses): integrity checks for model files, not crypto.
#pragma once
#include <cstddef>
#include <cstdint>

namespace edgelut {

// Continues a running CRC: crc32(crc32(0, a), b) == crc32(0, a + b), like zlib.crc32.
uint32_t crc32(uint32_t crc, const void* data, size_t size);

}  // namespace edgelut
