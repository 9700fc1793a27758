// The one portable packed-weight layout (docs/FORMAT.md, "Packed matrix").
//
// A packed N x K matrix is a single byte buffer with three 64-byte aligned
// sections, identical on every ISA:
//
//   codes  [T][NG][G/4][P][32]  uint8   T = ceil(N/64) row tiles, NG = ceil(K/G)
//                                       groups, P planes; byte j of a 32-byte run
//                                       holds the 4-bit index of tile row j (low
//                                       nibble) and of tile row j+32 (high nibble)
//   scales [T][NG][64]          fp16    per (row, group) scale s
//   mins   [T][NG][64]          fp16    per (row, group) offset m (asymmetric only)
//
// The 4-bit index of a row for chunk c (activations 4c..4c+3) and plane p has
// bit j set when plane p of the code of weight (row, 4c+j) is set.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant_types.h"

namespace edgelut {

constexpr int kTileRows = 64;   // rows per tile
constexpr int kChunk = 4;       // activations per lookup index
constexpr int kTableSize = 16;  // entries per lookup table
constexpr size_t kSectionAlign = 64;

inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

struct PackedShape {
  int64_t n = 0;         // output rows
  int64_t k = 0;         // input features
  QType qtype = QType::Q4;
  int32_t group = 32;    // 32, 64 or 128
  bool asym = false;     // mins section present

  int64_t tiles() const { return (n + kTileRows - 1) / kTileRows; }
  int64_t groups() const { return (k + group - 1) / group; }
  int64_t k_padded() const { return groups() * group; }
  int32_t planes() const { return qtype_traits(qtype).planes; }
  // Bytes of codes for one (tile, group).
  size_t group_code_bytes() const { return static_cast<size_t>(group / kChunk) * planes() * 32; }
  size_t codes_bytes() const { return static_cast<size_t>(tiles() * groups()) * group_code_bytes(); }
  size_t scales_bytes() const { return static_cast<size_t>(tiles() * groups()) * kTileRows * 2; }
  size_t codes_offset() const { return 0; }
  size_t scales_offset() const { return align_up(codes_bytes(), kSectionAlign); }
  size_t mins_offset() const { return scales_offset() + align_up(scales_bytes(), kSectionAlign); }
  size_t total_bytes() const {
    return mins_offset() + (asym ? align_up(scales_bytes(), kSectionAlign) : 0);
  }
};

// Throws std::invalid_argument naming the bad field.
void validate_shape(const PackedShape& s);

// A read-only view of packed bytes; the kernels trust it.
struct PackedView {
  PackedShape shape;
  const uint8_t* codes = nullptr;
  const uint16_t* scales = nullptr;  // fp16 bits
  const uint16_t* mins = nullptr;    // fp16 bits, nullptr when symmetric

  static PackedView over(const PackedShape& s, const uint8_t* base) {
    PackedView v;
    v.shape = s;
    v.codes = base + s.codes_offset();
    v.scales = reinterpret_cast<const uint16_t*>(base + s.scales_offset());
    v.mins = s.asym ? reinterpret_cast<const uint16_t*>(base + s.mins_offset()) : nullptr;
    return v;
  }
};

// Reference pack: codes [N][K] (int8 levels), scales/mins [N][NG] float.
// Rows and columns past N and K are padded with level 0 bits and zero scales.
// `out` must hold shape.total_bytes(). Throws on an out-of-range code.
void pack_codes(const PackedShape& s, const int8_t* codes, const float* scales, const float* mins,
                uint8_t* out);

// Reference unpack, the inverse of pack_codes (scales/mins come back rounded to fp16).
void unpack_codes(const PackedView& v, int8_t* codes, float* scales, float* mins);

// Dequantise to float [N][K] with the formula in quant_types.h.
void dequantize(const PackedView& v, float* out);

// Dequantise one row (k floats): the embedding lookup of a packed token table.
// The caller checks that row < n.
void dequantize_row(const PackedView& v, int64_t row, float* out);

}  // namespace edgelut
