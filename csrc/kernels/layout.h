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
// Two-level scales (shape.super > 0, asymmetric only; docs/ARCHITECTURE.md
// "Two-level scales") keep the three sections but store less in the last two:
//
//   scales [T][NG][64]          uint8   per (row, group): low nibble sub-scale
//                                       ls, high nibble sub-min lm (0..15 each)
//   mins   [T][NSB][2][64]      fp16    per (row, super-block): d, then dmin
//
// with NSB = ceil(NG / (super / G)) super-blocks of `super` weights (the last
// one may be partial, so any K works). The group's scale and offset are
//   s = d * float(ls),  m = dmin * float(lm)
// each one float multiply, computed identically by every kernel.
//
// The 4-bit index of a row for chunk c (activations 4c..4c+3) and plane p has
// bit j set when plane p of the code of weight (row, 4c+j) is set.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fp16.h"
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
  int32_t super = 0;     // two-level scales: weights per super-block (0 = fp16 per group)

  bool two_level() const { return super > 0; }
  // Two-level scales take the integer sub-scale path of lut.h when a group's
  // sum with its center term fits int16 and a super-block's int32 sums stay
  // exact in float: (sum|icoef| + 2 * center) * 127 * chunks <= 32767 and at
  // most 34 groups per super-block. That is every two-level type at group 32,
  // q1-q3 and ternary at 64, q1, q2 and ternary at 128.
  bool int_subscales() const;
  // Weights that share one activation-table scale: the super-block on the
  // integer sub-scale path, else the group.
  int32_t table_group() const { return int_subscales() ? super : group; }
  int64_t groups_per_table() const { return table_group() / group; }
  int64_t tiles() const { return (n + kTileRows - 1) / kTileRows; }
  int64_t groups() const { return (k + group - 1) / group; }
  int64_t groups_per_super() const { return two_level() ? super / group : 1; }
  int64_t supers() const { return (groups() + groups_per_super() - 1) / groups_per_super(); }
  int64_t k_padded() const { return groups() * group; }
  int32_t planes() const { return qtype_traits(qtype).planes; }
  // Bytes of codes for one (tile, group).
  size_t group_code_bytes() const { return static_cast<size_t>(group / kChunk) * planes() * 32; }
  size_t codes_bytes() const { return static_cast<size_t>(tiles() * groups()) * group_code_bytes(); }
  // Bytes of the scales and mins sections for one row tile (both sections are tile-major).
  size_t scale_tile_bytes() const { return static_cast<size_t>(groups()) * kTileRows * (two_level() ? 1 : 2); }
  size_t min_tile_bytes() const {
    return two_level() ? static_cast<size_t>(supers()) * 2 * kTileRows * 2 : static_cast<size_t>(groups()) * kTileRows * 2;
  }
  size_t scales_bytes() const { return static_cast<size_t>(tiles()) * scale_tile_bytes(); }
  size_t mins_bytes() const { return static_cast<size_t>(tiles()) * min_tile_bytes(); }
  size_t codes_offset() const { return 0; }
  size_t scales_offset() const { return align_up(codes_bytes(), kSectionAlign); }
  size_t mins_offset() const { return scales_offset() + align_up(scales_bytes(), kSectionAlign); }
  size_t total_bytes() const {
    return mins_offset() + (asym ? align_up(mins_bytes(), kSectionAlign) : 0);
  }
};

// Throws std::invalid_argument naming the bad field.
void validate_shape(const PackedShape& s);

// A read-only view of packed bytes; the kernels trust it. With two-level
// scales `scales` holds the sub-scale bytes and `mins` the super-block pairs
// (read them through GroupMeta, never directly).
struct PackedView {
  PackedShape shape;
  const uint8_t* codes = nullptr;
  const uint16_t* scales = nullptr;  // fp16 bits (two-level: uint8 sub-scales)
  const uint16_t* mins = nullptr;    // fp16 bits, nullptr when symmetric (two-level: d/dmin)

  static PackedView over(const PackedShape& s, const uint8_t* base) {
    PackedView v;
    v.shape = s;
    v.codes = base + s.codes_offset();
    v.scales = reinterpret_cast<const uint16_t*>(base + s.scales_offset());
    v.mins = s.asym ? reinterpret_cast<const uint16_t*>(base + s.mins_offset()) : nullptr;
    return v;
  }
};

// Where the scale and offset of the 64 rows of one (tile, group) live; the
// kernels' epilogues read them through this so both scale formats share one walk.
struct GroupMeta {
  const uint16_t* scales = nullptr;  // one-level: 64 fp16 scales
  const uint16_t* mins = nullptr;    // one-level: 64 fp16 offsets or nullptr
  const uint8_t* sub = nullptr;      // two-level: 64 bytes (ls | lm << 4)
  const uint16_t* d = nullptr;       // two-level: 64 fp16 super scales
  const uint16_t* dmin = nullptr;    // two-level: 64 fp16 super offsets
  bool has_min() const { return mins != nullptr || sub != nullptr; }
};

// These helpers are in an anonymous namespace because the per-ISA kernel files
// include this header with their own compiler flags: an inline function shared
// by name could be linked to the AVX-512 copy and run on an older CPU.
namespace {

inline GroupMeta group_meta(const PackedView& v, int64_t t, int64_t g) {
  GroupMeta m;
  const PackedShape& s = v.shape;
  const size_t tg = static_cast<size_t>(t * s.groups() + g) * kTileRows;
  if (s.two_level()) {
    m.sub = reinterpret_cast<const uint8_t*>(v.scales) + tg;
    const size_t ts = static_cast<size_t>(t * s.supers() + g / s.groups_per_super()) * 2 * kTileRows;
    m.d = v.mins + ts;
    m.dmin = v.mins + ts + kTileRows;
  } else {
    m.scales = v.scales + tg;
    m.mins = v.mins ? v.mins + tg : nullptr;
  }
  return m;
}

// Scalar scale and offset of row r (0..63): the values every SIMD epilogue reproduces.
inline float row_scale(const GroupMeta& m, int r) {
  return m.sub ? fp16_to_fp32(m.d[r]) * static_cast<float>(m.sub[r] & 15u) : fp16_to_fp32(m.scales[r]);
}
inline float row_min(const GroupMeta& m, int r) {
  if (m.sub) return fp16_to_fp32(m.dmin[r]) * static_cast<float>(m.sub[r] >> 4);
  return m.mins ? fp16_to_fp32(m.mins[r]) : 0.0f;
}

}  // namespace

// Reference pack: codes [N][K] (int8 levels), scales/mins [N][NG] float.
// Rows and columns past N and K are padded with level 0 bits and zero scales.
// `out` must hold shape.total_bytes(). Throws on an out-of-range code.
void pack_codes(const PackedShape& s, const int8_t* codes, const float* scales, const float* mins,
                uint8_t* out);

// Reference pack of two-level scales (shape.super > 0): codes [N][K], sub-scales
// and sub-mins [N][NG] (0..15), d and dmin [N][NSB] float (stored as fp16).
// Throws on an out-of-range code or sub-scale.
void pack_codes_two_level(const PackedShape& s, const int8_t* codes, const uint8_t* sub_scales,
                          const uint8_t* sub_mins, const float* d, const float* dmin, uint8_t* out);

// Reference unpack, the inverse of pack_codes (scales/mins come back rounded to
// fp16). Two-level scales come back as the per-group values the kernels use
// (s = d * ls, m = dmin * lm in float).
void unpack_codes(const PackedView& v, int8_t* codes, float* scales, float* mins);

// The stored two-level parameters (shape.super > 0): sub-scales and sub-mins
// [N][NG], d and dmin [N][NSB] (fp16 values as float).
void unpack_two_level(const PackedView& v, uint8_t* sub_scales, uint8_t* sub_mins, float* d, float* dmin);

// Dequantise to float [N][K] with the formula in quant_types.h.
void dequantize(const PackedView& v, float* out);

// Dequantise one row (k floats): the embedding lookup of a packed token table.
// The caller checks that row < n.
void dequantize_row(const PackedView& v, int64_t row, float* out);

}  // namespace edgelut
