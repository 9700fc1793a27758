// Bindings for the packed layout and the LUT matmul. No logic here: checks
// and behaviour live in csrc/kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "../engine/cpu_topology.h"
#include "../engine/thread_pool.h"
#include "../kernels/cpu_isa.h"
#include "../kernels/dispatch.h"
#include "../kernels/lut.h"
#include "../kernels/lut_ops.h"
#include "../kernels/packed_matrix.h"

namespace py = pybind11;

namespace edgelut::python {

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I8 = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style>;

PackedShape make_shape(int64_t n, int64_t k, const std::string& qtype, int group, bool asym, int super = 0) {
  PackedShape s;
  s.n = n;
  s.k = k;
  s.qtype = qtype_from_name(qtype);
  s.group = group;
  s.asym = asym;
  s.super = super;
  validate_shape(s);
  return s;
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

PackedMatrix pack(I8 codes, F32 scales, std::optional<F32> mins, const std::string& qtype, int group) {
  require(codes.ndim() == 2, "pack: codes must be 2-D (rows, cols)");
  const int64_t n = codes.shape(0), k = codes.shape(1);
  PackedShape s = make_shape(n, k, qtype, group, mins.has_value());
  require(scales.ndim() == 2 && scales.shape(0) == n && scales.shape(1) == s.groups(),
          "pack: scales must have shape (" + std::to_string(n) + ", " + std::to_string(s.groups()) + ")");
  if (mins)
    require(mins->ndim() == 2 && mins->shape(0) == n && mins->shape(1) == s.groups(),
            "pack: mins must have the shape of scales");
  const float* mp = mins ? mins->data() : nullptr;
  py::gil_scoped_release release;
  return PackedMatrix::pack(s, codes.data(), scales.data(), mp);
}

using U8In = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

PackedMatrix pack_two_level(I8 codes, U8In sub_scales, U8In sub_mins, F32 d, F32 dmin, const std::string& qtype,
                            int group, int super) {
  require(codes.ndim() == 2, "pack_two_level: codes must be 2-D (rows, cols)");
  require(super > 0, "pack_two_level: super_block must be positive, got " + std::to_string(super));
  const int64_t n = codes.shape(0), k = codes.shape(1);
  PackedShape s = make_shape(n, k, qtype, group, true, super);
  for (const U8In* a : {&sub_scales, &sub_mins})
    require(a->ndim() == 2 && a->shape(0) == n && a->shape(1) == s.groups(),
            "pack_two_level: sub-scales and sub-mins must have shape (" + std::to_string(n) + ", " +
                std::to_string(s.groups()) + ")");
  for (const F32* a : {&d, &dmin})
    require(a->ndim() == 2 && a->shape(0) == n && a->shape(1) == s.supers(),
            "pack_two_level: d and dmin must have shape (" + std::to_string(n) + ", " + std::to_string(s.supers()) +
                ")");
  py::gil_scoped_release release;
  return PackedMatrix::pack_two_level(s, codes.data(), sub_scales.data(), sub_mins.data(), d.data(), dmin.data());
}

py::tuple unpack_two_level_py(const PackedMatrix& pm) {
  const PackedShape& s = pm.shape();
  require(s.two_level(), "unpack_two_level: the matrix has one-level scales");
  py::array_t<uint8_t> ls({s.n, s.groups()}), lm({s.n, s.groups()});
  F32 d({s.n, s.supers()}), dmin({s.n, s.supers()});
  unpack_two_level(pm.view(), ls.mutable_data(), lm.mutable_data(), d.mutable_data(), dmin.mutable_data());
  return py::make_tuple(ls, lm, d, dmin);
}

PackedMatrix from_buffer(py::buffer buf, int64_t n, int64_t k, const std::string& qtype, int group, bool asym,
                         int super) {
  PackedShape s = make_shape(n, k, qtype, group, asym, super);
  py::buffer_info info = buf.request();
  require(info.itemsize == 1 && info.ndim == 1, "from_buffer: expected a 1-D byte buffer");
  // The Python object keeps the bytes alive (an mmap or a numpy array).
  auto keep = std::make_shared<py::object>(py::reinterpret_borrow<py::object>(buf));
  std::shared_ptr<void> owner(keep, keep.get());
  return PackedMatrix::borrow(s, static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size),
                              std::move(owner));
}

py::tuple unpack(const PackedMatrix& pm) {
  const PackedShape& s = pm.shape();
  I8 codes({s.n, s.k});
  F32 scales({s.n, s.groups()});
  F32 mins({s.n, s.groups()});
  unpack_codes(pm.view(), codes.mutable_data(), scales.mutable_data(), mins.mutable_data());
  if (!s.asym) return py::make_tuple(codes, scales, py::none());
  return py::make_tuple(codes, scales, mins);
}

F32 dequantize_matrix(const PackedMatrix& pm) {
  F32 out({pm.shape().n, pm.shape().k});
  float* p = out.mutable_data();
  py::gil_scoped_release release;
  dequantize(pm.view(), p);
  return out;
}

CpuIsa isa_or_default(const std::string& isa) { return isa.empty() ? cpu_isa() : isa_from_name(isa); }

F32 matmul(const PackedMatrix& pm, F32 x, const std::string& isa, int n_threads, bool int8) {
  require(x.ndim() == 2, "matmul: x must be 2-D (tokens, features)");
  require(x.shape(1) == pm.shape().k, "matmul: x has " + std::to_string(x.shape(1)) +
                                          " features but the matrix expects " + std::to_string(pm.shape().k));
  const int64_t m = x.shape(0);
  require(m > 0, "matmul: x has no rows");
  F32 y({m, pm.shape().n});
  const float* xp = x.data();
  float* yp = y.mutable_data();
  const CpuIsa which = isa_or_default(isa);
  py::gil_scoped_release release;
  lut_matmul(pm.view(), xp, m, pm.shape().k, yp, pm.shape().n, which, default_pool(n_threads), int8);
  return y;
}

py::tuple tables(const PackedMatrix& pm, F32 x, const std::string& isa) {
  const PackedShape& s = pm.shape();
  require(x.ndim() == 1 && x.shape(0) == s.k, "tables: x must be a vector of length K");
  py::array_t<int8_t> tab({static_cast<int64_t>(s.k_padded() / kChunk), static_cast<int64_t>(kTableSize)});
  F32 tscale({s.groups()});
  F32 asum({s.groups()});
  // "" = the scalar reference; an ISA name = that ISA's builder (bit-identical).
  BuildTablesFn fn = build_tables;
  if (!isa.empty() && kernels_for(isa_from_name(isa)).tables) fn = kernels_for(isa_from_name(isa)).tables;
  fn(s, x.data(), tab.mutable_data(), tscale.mutable_data(), asum.mutable_data());
  return py::make_tuple(tab, tscale, asum);
}

}  // namespace

void register_kernels(py::module_& m) {
  py::class_<PackedMatrix>(m, "PackedMatrix")
      .def_property_readonly("n", [](const PackedMatrix& p) { return p.shape().n; })
      .def_property_readonly("k", [](const PackedMatrix& p) { return p.shape().k; })
      .def_property_readonly("qtype", [](const PackedMatrix& p) { return qtype_traits(p.shape().qtype).name; })
      .def_property_readonly("group_size", [](const PackedMatrix& p) { return p.shape().group; })
      .def_property_readonly("asym", [](const PackedMatrix& p) { return p.shape().asym; })
      .def_property_readonly("super_block", [](const PackedMatrix& p) { return p.shape().super; },
                             "Weights per super-block of two-level scales (0 = fp16 scales per group).")
      .def_property_readonly("int_subscales", [](const PackedMatrix& p) { return p.shape().int_subscales(); },
                             "True when the kernels take the integer sub-scale path (csrc/kernels/lut.h).")
      .def_property_readonly("nbytes", &PackedMatrix::nbytes)
      .def_property_readonly("bits_per_weight", &PackedMatrix::bits_per_weight)
      .def_property_readonly(
          "data",
          [](py::object self) {
            const PackedMatrix& p = self.cast<const PackedMatrix&>();
            return U8({static_cast<py::ssize_t>(p.nbytes())}, {1}, p.data(), self);
          },
          "The packed bytes (read-only view).")
      .def("unpack", &unpack, "Codes (n, k) int8, scales (n, groups), mins or None.")
      .def("unpack_two_level", &unpack_two_level_py,
           "Two-level scales as stored: sub-scales, sub-mins (n, groups) uint8, d, dmin (n, super-blocks).")
      .def("dequantize", &dequantize_matrix, "The float matrix these bytes encode.");

  m.def("pack", &pack, py::arg("codes"), py::arg("scales"), py::arg("mins"), py::arg("qtype"), py::arg("group_size"));
  m.def("pack_two_level", &pack_two_level, py::arg("codes"), py::arg("sub_scales"), py::arg("sub_mins"),
        py::arg("d"), py::arg("dmin"), py::arg("qtype"), py::arg("group_size"), py::arg("super_block"));
  m.def("from_buffer", &from_buffer, py::arg("buffer"), py::arg("n"), py::arg("k"), py::arg("qtype"),
        py::arg("group_size"), py::arg("asym"), py::arg("super_block") = 0);
  m.def("matmul", &matmul, py::arg("w"), py::arg("x"), py::arg("isa") = "", py::arg("n_threads") = 0,
        py::arg("int8") = false);
  m.def("tables", &tables, py::arg("w"), py::arg("x"), py::arg("isa") = "");
  m.def("cpu_isa", [] { return std::string(isa_name(cpu_isa())); });
  m.def("supported_isas", [] {
    std::vector<std::string> out;
    for (CpuIsa i : supported_isas()) out.emplace_back(isa_name(i));
    return out;
  });
  m.def("int8_isas", [] {
    // The ISAs with an int8 prefill kernel; the others run "int8" requests on the LUT path.
    std::vector<std::string> out;
    for (CpuIsa i : supported_isas())
      if (kernels_for(i).gemm_int8) out.emplace_back(isa_name(i));
    return out;
  });
  m.def("cpu_features", &cpu_features);
  m.def("hardware_threads", &hardware_threads);
  m.def("fast_core_count", &fast_core_count, py::arg("cpu_dir"));
}

}  // namespace edgelut::python
