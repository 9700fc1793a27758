// Bindings for the C++ model-file reader (used by tests to cross-check the
// Python reader, and by the runtime when it loads without Python parsing).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "../io/crc32.h"
#include "../io/model_file.h"

namespace py = pybind11;

namespace edgelut::python {

namespace {

py::object value_to_python(const GgufValue& v) {
  switch (v.type) {
    case GgufType::String: return py::str(v.s);
    case GgufType::Bool: return py::bool_(v.i != 0);
    case GgufType::F32: case GgufType::F64: return py::float_(v.f);
    case GgufType::Array:
      if (v.elem == GgufType::String) return py::cast(v.strings);
      if (v.elem == GgufType::F32 || v.elem == GgufType::F64) return py::cast(v.floats);
      if (v.elem == GgufType::Array) return py::none();
      return py::cast(v.ints);
    default: return py::int_(v.i);
  }
}

py::dict tensor_dict(const FileTensor& t) {
  py::dict d;
  d["name"] = t.name;
  d["qtype"] = t.qtype;
  d["shape"] = py::tuple(py::cast(t.shape));
  d["offset"] = t.offset;
  d["nbytes"] = t.nbytes;
  d["crc32"] = t.crc32;
  d["packed"] = t.packed;
  d["group_size"] = t.packed ? t.pshape.group : 0;
  d["asym"] = t.packed && t.pshape.asym;
  return d;
}

}  // namespace

void register_io(py::module_& m) {
  py::class_<ModelFile, std::shared_ptr<ModelFile>>(m, "ModelFileReader")
      .def(py::init<const std::string&, bool>(), py::arg("path"), py::arg("verify_crc") = true,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("path", &ModelFile::path)
      .def_property_readonly("file_size", &ModelFile::file_size)
      .def_property_readonly("data_offset", &ModelFile::data_offset)
      .def_property_readonly("alignment", &ModelFile::alignment)
      .def_property_readonly("format_version", &ModelFile::format_version)
      .def_property_readonly("hparams",
                             [](const ModelFile& f) {
                               const ModelHParams& h = f.hparams();
                               py::dict d;
                               d["architecture"] = h.architecture;
                               d["vocab_size"] = h.vocab_size;
                               d["hidden_size"] = h.hidden_size;
                               d["intermediate_size"] = h.intermediate_size;
                               d["n_layers"] = h.n_layers;
                               d["n_heads"] = h.n_heads;
                               d["n_kv_heads"] = h.n_kv_heads;
                               d["head_dim"] = h.head_dim;
                               d["context_length"] = h.context_length;
                               d["rms_norm_eps"] = h.rms_norm_eps;
                               d["rope_theta"] = h.rope_theta;
                               d["rope_style"] = h.rope_style;
                               d["tie_embeddings"] = h.tie_embeddings;
                               d["attn_bias"] = h.attn_bias;
                               return d;
                             })
      .def("keys",
           [](const ModelFile& f) {
             std::vector<std::string> out;
             for (const auto& kv : f.metadata()) out.push_back(kv.first);
             return out;
           })
      .def("get",
           [](const ModelFile& f, const std::string& key) -> py::object {
             const GgufValue* v = f.find(key);
             return v ? value_to_python(*v) : py::none();
           })
      .def("tensors",
           [](const ModelFile& f) {
             py::list out;
             for (const FileTensor& t : f.tensors()) out.append(tensor_dict(t));
             return out;
           })
      .def("layers",
           [](const ModelFile& f) {
             std::vector<std::pair<uint64_t, uint64_t>> out;
             for (const LayerRange& r : f.layers()) out.emplace_back(r.offset, r.size);
             return out;
           })
      .def("verify_crcs", &ModelFile::verify_crcs, py::call_guard<py::gil_scoped_release>());

  m.def("crc32", [](py::bytes data, uint32_t crc) {
    std::string_view s = data;
    return crc32(crc, s.data(), s.size());
  }, py::arg("data"), py::arg("crc") = 0);
}

}  // namespace edgelut::python
