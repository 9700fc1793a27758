// A packed weight matrix: the layout's bytes plus who keeps them alive.
// The bytes may be owned (packed here), or borrowed from a model file mapping
// or a pager slot; either way kernels see a PackedView.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "layout.h"

namespace edgelut {

class PackedMatrix {
 public:
  PackedMatrix() = default;
  // Packs codes (n x k levels), scales and mins (n x groups); mins may be null.
  static PackedMatrix pack(const PackedShape& s, const int8_t* codes, const float* scales, const float* mins);
  // Packs codes with two-level scales (s.super > 0): sub-scales and sub-mins
  // (n x groups, 0..15), d and dmin (n x super-blocks).
  static PackedMatrix pack_two_level(const PackedShape& s, const int8_t* codes, const uint8_t* sub_scales,
                                     const uint8_t* sub_mins, const float* d, const float* dmin);
  // Borrows bytes; `owner` keeps them alive. Checks size and alignment.
  static PackedMatrix borrow(const PackedShape& s, const uint8_t* data, size_t size, std::shared_ptr<void> owner);

  const PackedShape& shape() const { return shape_; }
  const uint8_t* data() const { return data_; }
  size_t nbytes() const { return shape_.total_bytes(); }
  PackedView view() const { return PackedView::over(shape_, data_); }
  // Stored bits per logical weight, scales and mins included, padding excluded.
  double bits_per_weight() const;

 private:
  PackedShape shape_;
  const uint8_t* data_ = nullptr;
  std::shared_ptr<void> owner_;
};

// QType from its name ("q1".."q4", "tq"); throws std::invalid_argument.
QType qtype_from_name(const std::string& name);

}  // namespace edgelut
