// Weight formats as a table: one row per format, never an if-chain.
//
// Every format is stored bit-serially. A weight code is split into `planes`
// binary planes; plane i contributes coef[i] * sigma_i where sigma_i = +1 when
// the bit is set and -1 when it is clear. This "mirror" form is what lets the
// lookup table for 4 activations be antisymmetric (T[15 - idx] = -T[idx]).
//
//   b-bit (q in [0, 2^b)):   q - (2^b - 1)/2 = sum_i 2^(i-1) * sigma_i
//   ternary (t in {-1,0,1}): t = 0.5 * sigma_1 - 0.5 * sigma_0
//                            (t=+1 -> bits 10, t=-1 -> 01, t=0 -> 00)
//
// Value of a weight (s = group scale, m = group offset, both fp16 on disk):
//   symmetric:  w = s * (level - center)
//   asymmetric: w = s * level + m
// where level is q for b-bit types and t for ternary, and center is
// (2^b - 1)/2 for b-bit types and 0 for ternary.
#pragma once
#include <cstdint>

namespace edgelut {

enum class QType : int32_t { Q1 = 0, Q2 = 1, Q3 = 2, Q4 = 3, TQ = 4, kCount = 5 };

struct QTypeTraits {
  const char* name;
  int32_t planes;       // bit planes stored per weight
  int32_t code_min;     // smallest legal code (level)
  int32_t code_max;     // largest legal code (level)
  float center;         // level that maps to zero in the symmetric form
  int32_t icoef[4];     // 2 * coef[i]: integer weights used to combine planes
  double bits_per_code; // information content, for bits-per-weight reports
};

// Indexed by QType.
inline constexpr QTypeTraits kQTypeTraits[] = {
    {"q1", 1, 0, 1, 0.5f, {1, 0, 0, 0}, 1.0},
    {"q2", 2, 0, 3, 1.5f, {1, 2, 0, 0}, 2.0},
    {"q3", 3, 0, 7, 3.5f, {1, 2, 4, 0}, 3.0},
    {"q4", 4, 0, 15, 7.5f, {1, 2, 4, 8}, 4.0},
    {"tq", 2, -1, 1, 0.0f, {-1, 1, 0, 0}, 1.5849625007211562},
};
static_assert(sizeof(kQTypeTraits) / sizeof(kQTypeTraits[0]) == static_cast<int>(QType::kCount),
              "one row per QType");

inline const QTypeTraits& qtype_traits(QType t) { return kQTypeTraits[static_cast<int>(t)]; }

// Bit pattern (plane i in bit i) stored for a code of the given type.
inline uint32_t code_to_bits(QType t, int32_t code) {
  if (t == QType::TQ) return code > 0 ? 2u : (code < 0 ? 1u : 0u);
  return static_cast<uint32_t>(code);
}

inline int32_t bits_to_code(QType t, uint32_t bits) {
  if (t == QType::TQ) return static_cast<int32_t>((bits >> 1) & 1u) - static_cast<int32_t>(bits & 1u);
  return static_cast<int32_t>(bits);
}

}  // namespace edgelut
