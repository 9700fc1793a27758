#include "packed_matrix.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace edgelut {

namespace {
std::shared_ptr<void> alloc_packed(const PackedShape& s) {
  const size_t bytes = align_up(s.total_bytes(), kSectionAlign);
  void* mem = std::aligned_alloc(kSectionAlign, bytes);
  if (!mem) throw std::runtime_error("pack: out of memory");
  return std::shared_ptr<void>(mem, std::free);
}
}  // namespace

PackedMatrix PackedMatrix::pack_two_level(const PackedShape& s, const int8_t* codes, const uint8_t* sub_scales,
                                          const uint8_t* sub_mins, const float* d, const float* dmin) {
  validate_shape(s);
  std::shared_ptr<void> owner = alloc_packed(s);
  void* mem = owner.get();
  pack_codes_two_level(s, codes, sub_scales, sub_mins, d, dmin, static_cast<uint8_t*>(mem));
  PackedMatrix m;
  m.shape_ = s;
  m.data_ = static_cast<const uint8_t*>(mem);
  m.owner_ = std::move(owner);
  return m;
}

PackedMatrix PackedMatrix::pack(const PackedShape& s, const int8_t* codes, const float* scales,
                                const float* mins) {
  validate_shape(s);
  if (s.asym && !mins) throw std::invalid_argument("pack: asymmetric packing needs mins");
  std::shared_ptr<void> owner = alloc_packed(s);
  void* mem = owner.get();
  pack_codes(s, codes, scales, mins, static_cast<uint8_t*>(mem));
  PackedMatrix m;
  m.shape_ = s;
  m.data_ = static_cast<const uint8_t*>(mem);
  m.owner_ = std::move(owner);
  return m;
}

PackedMatrix PackedMatrix::borrow(const PackedShape& s, const uint8_t* data, size_t size,
                                  std::shared_ptr<void> owner) {
  validate_shape(s);
  if (size < s.total_bytes())
    throw std::invalid_argument("packed matrix: buffer holds " + std::to_string(size) + " bytes but the shape needs " +
                                std::to_string(s.total_bytes()));
  // The kernels use aligned loads of 2-byte scales; 64 keeps SIMD loads in one line.
  if (reinterpret_cast<uintptr_t>(data) % kSectionAlign != 0)
    throw std::invalid_argument("packed matrix: buffer is not 64-byte aligned");
  PackedMatrix m;
  m.shape_ = s;
  m.data_ = data;
  m.owner_ = std::move(owner);
  return m;
}

double PackedMatrix::bits_per_weight() const {
  const double weights = static_cast<double>(shape_.n) * static_cast<double>(shape_.k);
  const double groups = static_cast<double>(shape_.n) * static_cast<double>(shape_.groups());
  const double code_bits = weights * qtype_traits(shape_.qtype).planes;
  // Two-level: a byte per group and an fp16 pair per super-block.
  const double supers = static_cast<double>(shape_.n) * static_cast<double>(shape_.supers());
  const double meta_bits =
      shape_.two_level() ? groups * 8.0 + supers * 32.0 : groups * 16.0 * (shape_.asym ? 2.0 : 1.0);
  return (code_bits + meta_bits) / weights;
}

QType qtype_from_name(const std::string& name) {
  for (int i = 0; i < static_cast<int>(QType::kCount); ++i)
    if (name == kQTypeTraits[i].name) return static_cast<QType>(i);
  throw std::invalid_argument("unknown weight type '" + name + "' (expected q1, q2, q3, q4 or tq)");
}

}  // namespace edgelut
