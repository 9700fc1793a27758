// Bindings for the C++ readers: read_gguf (any GGUF container: header,
// metadata and tensor infos as Python values; the tensor bytes are left to a
// numpy.memmap) and ModelFileReader (an edgelut model file, fully checked).
// Every Python read of an untrusted GGUF goes through one of them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "../io/crc32.h"
#include "../io/gguf.h"
#include "../io/model_file.h"

namespace py = pybind11;

namespace edgelut::python {

namespace {

py::object element(GgufType t, int64_t i) {
  if (t == GgufType::Bool) return py::bool_(i != 0);
  if (t == GgufType::U64) return py::int_(static_cast<uint64_t>(i));
  return py::int_(i);
}

py::object value_to_python(const GgufValue& v) {
  switch (v.type) {
    case GgufType::String: return py::str(v.s);
    case GgufType::F32: case GgufType::F64: return py::float_(v.f);
    case GgufType::Array: {
      if (v.elem == GgufType::String) return py::cast(v.strings);
      if (v.elem == GgufType::F32 || v.elem == GgufType::F64) return py::cast(v.floats);
      py::list out(v.count);
      for (size_t j = 0; j < v.count; ++j)
        out[j] = v.elem == GgufType::Array ? value_to_python(v.items[j]) : element(v.elem, v.ints[j]);
      return std::move(out);
    }
    default: return element(v.type, v.i);
  }
}

// "u32", "string", "array[u32]", ...: what a typed getter needs to name a mismatch.
std::string type_label(const GgufValue& v) {
  if (v.type != GgufType::Array) return gguf_type_name(v.type);
  return std::string("array[") + gguf_type_name(v.elem) + "]";
}

template <typename Map>
std::pair<py::dict, py::dict> metadata_dicts(const std::vector<std::string>& keys, const Map& kv) {
  py::dict values, types;
  for (const std::string& k : keys) {
    const GgufValue& v = kv.at(k);
    values[py::str(k)] = value_to_python(v);
    types[py::str(k)] = type_label(v);
  }
  return {values, types};
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
  d["super_block"] = t.packed ? t.pshape.super : 0;
  return d;
}

}  // namespace

void register_io(py::module_& m) {
  // Content problems are ValueErrors, a path that cannot be read as a file an OSError.
  py::register_exception<ModelFileError>(m, "ModelFileError", PyExc_ValueError);
  py::register_exception<FileAccessError>(m, "FileAccessError", PyExc_OSError);

  m.def(
      "read_gguf",
      [](const std::string& path) {
        GgufContents g;
        uint64_t size = 0;
        {
          py::gil_scoped_release release;
          MappedFile f(path);
          size = f.size();
          g = parse_gguf(f.data(), f.size(), path);
        }
        auto [values, types] = metadata_dicts(g.keys, g.kv);
        py::list tensors;
        for (const GgufTensorInfo& t : g.tensors) {
          py::dict d;
          d["name"] = t.name;
          d["shape"] = py::tuple(py::cast(std::vector<uint64_t>(t.ne.rbegin(), t.ne.rend())));
          d["type"] = t.type;
          d["type_name"] = ggml_type_info(t.type)->name;
          d["offset"] = t.offset;
          d["nbytes"] = t.nbytes;
          tensors.append(d);
        }
        py::dict out;
        out["version"] = g.version;
        out["alignment"] = g.alignment;
        out["data_offset"] = g.data_offset;
        out["file_size"] = size;
        out["metadata"] = values;
        out["types"] = types;
        out["tensors"] = tensors;
        return out;
      },
      py::arg("path"),
      "Header, metadata and tensor infos of a GGUF file (bounded; raises ModelFileError or FileAccessError).");
  m.def("ggml_types", [] {
    py::dict out;
    for (const GgmlTypeInfo& t : ggml_types()) out[py::int_(t.id)] = py::make_tuple(t.name, t.block, t.bytes);
    return out;
  });

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
      .def("keys", [](const ModelFile& f) { return f.keys(); })
      // ({key: value}, {key: type label}), in file order.
      .def("metadata", [](const ModelFile& f) { return metadata_dicts(f.keys(), f.metadata()); })
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
