// Reference pack / unpack / dequantise of the portable layout (layout.h).
#include "layout.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "fp16.h"

namespace edgelut {

void validate_shape(const PackedShape& s) {
  if (s.n <= 0 || s.k <= 0)
    throw std::invalid_argument("packed matrix: shape must be positive, got " + std::to_string(s.n) +
                                " x " + std::to_string(s.k));
  if (s.group != 32 && s.group != 64 && s.group != 128)
    throw std::invalid_argument("packed matrix: group size must be 32, 64 or 128, got " +
                                std::to_string(s.group));
  const int q = static_cast<int>(s.qtype);
  if (q < 0 || q >= static_cast<int>(QType::kCount))
    throw std::invalid_argument("packed matrix: unknown quant type id " + std::to_string(q));
  if (s.super != 0) {
    if (s.super < 0 || s.super % s.group != 0 || s.super > 4096)
      throw std::invalid_argument("packed matrix: super-block must be a multiple of the group size up to 4096, got " +
                                  std::to_string(s.super));
    if (!s.asym) throw std::invalid_argument("packed matrix: two-level scales need asymmetric groups");
  }
  // Tiles and offsets are computed in size_t; keep them far from overflow.
  if (s.n > (int64_t{1} << 31) || s.k > (int64_t{1} << 31))
    throw std::invalid_argument("packed matrix: dimension too large");
}

bool PackedShape::int_subscales() const {
  if (!two_level()) return false;
  const QTypeTraits& tr = qtype_traits(qtype);
  int32_t sumabs = 0;
  for (int p = 0; p < tr.planes; ++p) sumabs += tr.icoef[p] < 0 ? -tr.icoef[p] : tr.icoef[p];
  const int64_t two_center = static_cast<int64_t>(2.0f * tr.center);
  return (sumabs + two_center) * 127 * (group / kChunk) <= 32767 && super / group <= 34;
}

namespace {
// Address of the 32-byte run for (tile, group, chunk-in-group, plane).
inline size_t run_offset(const PackedShape& s, int64_t t, int64_t g, int64_t c, int p) {
  const int64_t cpg = s.group / kChunk;
  return ((static_cast<size_t>(t * s.groups() + g) * cpg + c) * s.planes() + p) * 32;
}
inline size_t scale_index(const PackedShape& s, int64_t row, int64_t g) {
  return (static_cast<size_t>(row / kTileRows) * s.groups() + g) * kTileRows + row % kTileRows;
}
}  // namespace

namespace {
// The codes section, shared by both scale formats (out is zeroed by the caller).
void pack_code_bits(const PackedShape& s, const int8_t* codes, uint8_t* out) {
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int planes = tr.planes;
  for (int64_t r = 0; r < s.n; ++r) {
    const int64_t t = r / kTileRows, j = r % kTileRows;
    const int shift = j < 32 ? 0 : 4;
    const int64_t lane = j % 32;
    for (int64_t col = 0; col < s.k; ++col) {
      const int32_t code = codes[r * s.k + col];
      if (code < tr.code_min || code > tr.code_max)
        throw std::invalid_argument("pack: code " + std::to_string(code) + " at (" + std::to_string(r) +
                                    ", " + std::to_string(col) + ") is outside [" +
                                    std::to_string(tr.code_min) + ", " + std::to_string(tr.code_max) +
                                    "] for type " + tr.name);
      const uint32_t bits = code_to_bits(s.qtype, code);
      const int64_t g = col / s.group, c = (col % s.group) / kChunk, bit = col % kChunk;
      for (int p = 0; p < planes; ++p) {
        if ((bits >> p) & 1u) out[run_offset(s, t, g, c, p) + lane] |= static_cast<uint8_t>(1u << (bit + shift));
      }
    }
  }
  // Padded columns of real rows stay level 0 so the packed bytes are a pure
  // function of the logical matrix (bits 0 is level 0 for every type except
  // ternary, whose 0 is also bits 00).
}

inline size_t super_index(const PackedShape& s, int64_t row, int64_t sb) {
  return (static_cast<size_t>(row / kTileRows) * s.supers() + sb) * 2 * kTileRows + row % kTileRows;
}
}  // namespace

void pack_codes(const PackedShape& s, const int8_t* codes, const float* scales, const float* mins,
                uint8_t* out) {
  validate_shape(s);
  if (s.two_level()) throw std::invalid_argument("pack: two-level scales are packed by pack_codes_two_level");
  std::memset(out, 0, s.total_bytes());
  pack_code_bits(s, codes, out);
  const int64_t ng = s.groups();
  uint16_t* sc = reinterpret_cast<uint16_t*>(out + s.scales_offset());
  uint16_t* mn = reinterpret_cast<uint16_t*>(out + s.mins_offset());
  for (int64_t r = 0; r < s.n; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      sc[scale_index(s, r, g)] = fp32_to_fp16(scales[r * ng + g]);
      if (s.asym) mn[scale_index(s, r, g)] = fp32_to_fp16(mins[r * ng + g]);
    }
}

void pack_codes_two_level(const PackedShape& s, const int8_t* codes, const uint8_t* sub_scales,
                          const uint8_t* sub_mins, const float* d, const float* dmin, uint8_t* out) {
  validate_shape(s);
  if (!s.two_level()) throw std::invalid_argument("pack: the shape has no super-block size");
  std::memset(out, 0, s.total_bytes());
  pack_code_bits(s, codes, out);
  const int64_t ng = s.groups(), nsb = s.supers();
  uint8_t* sub = out + s.scales_offset();
  uint16_t* sup = reinterpret_cast<uint16_t*>(out + s.mins_offset());
  for (int64_t r = 0; r < s.n; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const uint8_t ls = sub_scales[r * ng + g], lm = sub_mins[r * ng + g];
      if (ls > 15 || lm > 15)
        throw std::invalid_argument("pack: sub-scale " + std::to_string(ls) + " / sub-min " + std::to_string(lm) +
                                    " at (" + std::to_string(r) + ", group " + std::to_string(g) +
                                    ") is outside [0, 15]");
      sub[scale_index(s, r, g)] = static_cast<uint8_t>(ls | (lm << 4));
    }
    for (int64_t b = 0; b < nsb; ++b) {
      sup[super_index(s, r, b)] = fp32_to_fp16(d[r * nsb + b]);
      sup[super_index(s, r, b) + kTileRows] = fp32_to_fp16(dmin[r * nsb + b]);
    }
  }
}

void unpack_codes(const PackedView& v, int8_t* codes, float* scales, float* mins) {
  const PackedShape& s = v.shape;
  const int64_t ng = s.groups();
  const int planes = s.planes();
  for (int64_t r = 0; r < s.n; ++r) {
    const int64_t t = r / kTileRows, j = r % kTileRows;
    const int shift = j < 32 ? 0 : 4;
    const int64_t lane = j % 32;
    for (int64_t col = 0; col < s.k; ++col) {
      const int64_t g = col / s.group, c = (col % s.group) / kChunk, bit = col % kChunk;
      uint32_t bits = 0;
      for (int p = 0; p < planes; ++p)
        bits |= ((v.codes[run_offset(s, t, g, c, p) + lane] >> (bit + shift)) & 1u) << p;
      codes[r * s.k + col] = static_cast<int8_t>(bits_to_code(s.qtype, bits));
    }
    for (int64_t g = 0; g < ng; ++g) {
      const GroupMeta m = group_meta(v, t, g);
      scales[r * ng + g] = row_scale(m, static_cast<int>(j));
      if (mins) mins[r * ng + g] = row_min(m, static_cast<int>(j));
    }
  }
}

void unpack_two_level(const PackedView& v, uint8_t* sub_scales, uint8_t* sub_mins, float* d, float* dmin) {
  const PackedShape& s = v.shape;
  const int64_t ng = s.groups(), nsb = s.supers();
  const uint8_t* sub = reinterpret_cast<const uint8_t*>(v.scales);
  for (int64_t r = 0; r < s.n; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const uint8_t b = sub[scale_index(s, r, g)];
      sub_scales[r * ng + g] = b & 15u;
      sub_mins[r * ng + g] = b >> 4;
    }
    for (int64_t b = 0; b < nsb; ++b) {
      d[r * nsb + b] = fp16_to_fp32(v.mins[super_index(s, r, b)]);
      dmin[r * nsb + b] = fp16_to_fp32(v.mins[super_index(s, r, b) + kTileRows]);
    }
  }
}

void dequantize(const PackedView& v, float* out) {
  const PackedShape& s = v.shape;
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int64_t ng = s.groups();
  std::vector<int8_t> codes(static_cast<size_t>(s.n * s.k));
  std::vector<float> sc(static_cast<size_t>(s.n * ng)), mn(static_cast<size_t>(s.n * ng));
  unpack_codes(v, codes.data(), sc.data(), mn.data());
  for (int64_t r = 0; r < s.n; ++r)
    for (int64_t col = 0; col < s.k; ++col) {
      const int64_t g = col / s.group;
      const float level = static_cast<float>(codes[r * s.k + col]);
      const float scale = sc[r * ng + g];
      out[r * s.k + col] = s.asym ? scale * level + mn[r * ng + g] : scale * (level - tr.center);
    }
}

void dequantize_row(const PackedView& v, int64_t row, float* out) {
  const PackedShape& s = v.shape;
  const QTypeTraits& tr = qtype_traits(s.qtype);
  const int64_t t = row / kTileRows, j = row % kTileRows;
  const int shift = j < 32 ? 0 : 4;
  const int64_t lane = j % 32;
  const int planes = s.planes();
  for (int64_t g = 0; g < s.groups(); ++g) {
    const GroupMeta m = group_meta(v, t, g);
    const float scale = row_scale(m, static_cast<int>(j));
    const float mn = row_min(m, static_cast<int>(j));
    const int64_t end = std::min<int64_t>(s.k, (g + 1) * s.group);
    for (int64_t col = g * s.group; col < end; ++col) {
      const int64_t c = (col % s.group) / kChunk, bit = col % kChunk;
      uint32_t bits = 0;
      for (int p = 0; p < planes; ++p) bits |= ((v.codes[run_offset(s, t, g, c, p) + lane] >> (bit + shift)) & 1u) << p;
      const float level = static_cast<float>(bits_to_code(s.qtype, bits));
      out[col] = s.asym ? scale * level + mn : scale * (level - tr.center);
    }
  }
}

}  // namespace edgelut
