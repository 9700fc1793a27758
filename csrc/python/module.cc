// edgelut._core: thin bindings; each register_* lives in its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace edgelut::python {
void register_kernels(py::module_& m);
void register_pager(py::module_& m);
void register_io(py::module_& m);
void register_engine(py::module_& m);
void register_net(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "edgelut C++ core (private; use the edgelut package)";
  edgelut::python::register_kernels(m);
  edgelut::python::register_pager(m);
  edgelut::python::register_io(m);
  edgelut::python::register_engine(m);
  edgelut::python::register_net(m);
}
