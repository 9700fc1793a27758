// Bindings for the sliding-window weight pager (csrc/io/pager.h). No logic
// here: a layer comes back as a read-only numpy view of its slot, valid until
// release(layer); the view keeps the Pager object alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <utility>
#include <vector>

#include "../io/pager.h"

namespace py = pybind11;

namespace edgelut::python {

// Also used by register_engine.cc for a paged engine's stats.
py::dict pager_stats_dict(const PagerStats& s) {
  py::dict d;
  d["acquires"] = s.acquires;
  d["waits"] = s.waits;
  d["wait_ns"] = s.wait_ns;
  d["max_wait_ns"] = s.max_wait_ns;
  d["layer_wait_ns"] = s.layer_wait_ns;
  d["reads"] = s.reads;
  d["bytes_read"] = s.bytes_read;
  d["read_ns"] = s.read_ns;
  d["slot_bytes"] = s.slot_bytes;
  d["resident_bytes"] = s.resident_bytes;
  d["peak_resident_bytes"] = s.peak_resident_bytes;
  return d;
}

namespace {

std::unique_ptr<Pager> make_pager(const std::string& path, const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                                  int window, bool drop_cache, bool direct_io) {
  std::vector<ByteRange> layers;
  layers.reserve(ranges.size());
  for (const auto& [offset, size] : ranges) layers.push_back({offset, size});
  PagerOptions opt;
  opt.drop_cache = drop_cache;
  opt.direct_io = direct_io;
  py::gil_scoped_release release;  // a resident pager reads the whole file here
  return std::make_unique<Pager>(path, std::move(layers), window, opt);
}

py::array acquire(py::object self, int layer) {
  Pager& pager = self.cast<Pager&>();
  const uint8_t* p = nullptr;
  {
    py::gil_scoped_release release;
    p = pager.acquire(layer);
  }
  py::array view(py::dtype::of<uint8_t>(), {static_cast<py::ssize_t>(pager.layer_size(layer))}, {1}, p, self);
  view.attr("flags").attr("writeable") = false;
  return view;
}

}  // namespace

void register_pager(py::module_& m) {
  py::class_<Pager>(m, "Pager", "Sliding-window weight pager over the layer byte ranges of one file.")
      .def(py::init(&make_pager), py::arg("path"), py::arg("ranges"), py::arg("window"), py::kw_only(),
           py::arg("drop_cache") = false, py::arg("direct_io") = false)
      .def("acquire", &acquire, py::arg("layer"),
           "The layer's bytes as a read-only uint8 array, valid until release(layer).")
      .def("release", &Pager::release, py::arg("layer"))
      .def("layer_size", &Pager::layer_size, py::arg("layer"))
      .def_property_readonly("n_layers", &Pager::n_layers)
      .def_property_readonly("window", &Pager::window)
      .def_property_readonly("resident", &Pager::resident)
      .def_property_readonly("path", &Pager::path)
      .def_property_readonly("direct_io", &Pager::direct_io)
      .def_property_readonly("io_note", &Pager::io_note)
      .def("stats", [](const Pager& p) { return pager_stats_dict(p.stats()); })
      .def("reset_stats", &Pager::reset_stats)
      .def_static("window_for_budget", &Pager::window_for_budget, py::arg("layer_sizes"), py::arg("fixed_bytes"),
                  py::arg("budget_bytes"))
      .def_static("slot_bytes_for", &Pager::slot_bytes_for, py::arg("layer_sizes"), py::arg("window"));
}

}  // namespace edgelut::python
