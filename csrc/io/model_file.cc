// GGUF parsing with a bounds-checked cursor: every length and count is checked
// against the bytes left before anything is allocated or read, so truncated or
// corrupt files end in std::invalid_argument, never in a crash or a huge allocation.
#include "model_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "../kernels/packed_matrix.h"
#include "crc32.h"

namespace edgelut {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 4;

// Bytes per element of the GGUF tensor types an edgelut file may hold.
int64_t ggml_type_size(uint32_t t) {
  switch (t) {
    case 0: return 4;   // F32
    case 1: return 2;   // F16
    case 24: return 1;  // I8
    case 25: return 2;  // I16
    case 26: return 4;  // I32
    case 27: return 8;  // I64
    case 28: return 8;  // F64
    case 30: return 2;  // BF16
    default: return 0;
  }
}

// Size of a scalar metadata value; 0 for strings and arrays.
uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, const std::string& path) : p_(p), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      throw std::invalid_argument(path_ + " is truncated or corrupt: " + what + " at byte " + std::to_string(pos_) +
                                  " needs " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // the format is little-endian, as are all targets
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(uint64_t n, const char* what) {
    need(n, what);
    pos_ += n;
  }

  // A scalar as int64 or double.
  void scalar(GgufType t, int64_t* i, double* f) {
    switch (t) {
      case GgufType::U8: *i = read<uint8_t>("u8"); break;
      case GgufType::I8: *i = read<int8_t>("i8"); break;
      case GgufType::Bool: *i = read<uint8_t>("bool") != 0; break;
      case GgufType::U16: *i = read<uint16_t>("u16"); break;
      case GgufType::I16: *i = read<int16_t>("i16"); break;
      case GgufType::U32: *i = read<uint32_t>("u32"); break;
      case GgufType::I32: *i = read<int32_t>("i32"); break;
      case GgufType::U64: *i = static_cast<int64_t>(read<uint64_t>("u64")); break;
      case GgufType::I64: *i = read<int64_t>("i64"); break;
      case GgufType::F32: *f = read<float>("f32"); break;
      case GgufType::F64: *f = read<double>("f64"); break;
      default: throw std::invalid_argument(path_ + " is corrupt: bad scalar type");
    }
  }

  GgufType type(const char* what) {
    const uint32_t t = read<uint32_t>(what);
    if (t > static_cast<uint32_t>(GgufType::F64))
      throw std::invalid_argument(path_ + " is corrupt: unknown metadata type " + std::to_string(t) + " at byte " +
                                  std::to_string(pos_ - 4));
    return static_cast<GgufType>(t);
  }

  // Reads one value of type t into v (arrays of arrays are skipped but bounds-checked).
  void value(GgufType t, GgufValue& v, int depth) {
    v.type = t;
    if (t == GgufType::String) {
      v.s = string("string value");
      return;
    }
    if (t != GgufType::Array) {
      scalar(t, &v.i, &v.f);
      return;
    }
    if (depth >= kMaxArrayDepth) throw std::invalid_argument(path_ + " is corrupt: arrays nested too deeply");
    v.elem = type("array type");
    v.count = read<uint64_t>("array length");
    const uint64_t each = scalar_size(v.elem);
    // Every element takes at least one byte (8 for a string's length).
    const uint64_t min_each = each ? each : 8;
    if (v.count > left() / min_each)
      throw std::invalid_argument(path_ + " is truncated or corrupt: array of " + std::to_string(v.count) +
                                  " elements does not fit in the file");
    if (v.elem == GgufType::String) {
      v.strings.reserve(v.count);
      for (uint64_t j = 0; j < v.count; ++j) v.strings.push_back(string("array string"));
    } else if (v.elem == GgufType::Array) {
      for (uint64_t j = 0; j < v.count; ++j) {
        GgufValue inner;
        value(GgufType::Array, inner, depth + 1);
      }
    } else if (is_float(v.elem)) {
      v.floats.resize(v.count);
      int64_t dummy = 0;
      for (uint64_t j = 0; j < v.count; ++j) scalar(v.elem, &dummy, &v.floats[j]);
    } else {
      v.ints.resize(v.count);
      double dummy = 0;
      for (uint64_t j = 0; j < v.count; ++j) scalar(v.elem, &v.ints[j], &dummy);
    }
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

}  // namespace

ModelFile::ModelFile(const std::string& path, bool verify_crc) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error(path + ": cannot stat: " + std::strerror(err));
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < 4) {
    ::close(fd_);
    throw std::invalid_argument(path + " is not an edgelut model file (" + std::to_string(size_) + " bytes)");
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error(path + ": cannot map: " + std::strerror(err));
  }
  map_ = static_cast<const uint8_t*>(m);
  try {
    parse();
    if (verify_crc) verify_crcs();
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), size_);
    ::close(fd_);
    throw;
  }
}

ModelFile::~ModelFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void ModelFile::fail(const std::string& what) const {
  // Names and keys come from the file: escape bytes that are not printable ASCII so a
  // corrupt name cannot produce an invalid UTF-8 message.
  std::string clean;
  for (unsigned char ch : what) {
    if (ch >= 0x20 && ch < 0x7f) {
      clean += static_cast<char>(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      clean += buf;
    }
  }
  throw std::invalid_argument(path_ + ": " + clean);
}

void ModelFile::parse() {
  Cursor c(map_, size_, path_);
  if (c.read<uint32_t>("magic") != kGgufMagic)
    throw std::invalid_argument(path_ + " is not an edgelut model file (no GGUF magic)");
  const uint32_t gguf_version = c.read<uint32_t>("GGUF version");
  if (gguf_version < 2 || gguf_version > 3) fail("unsupported GGUF version " + std::to_string(gguf_version));
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each key/value takes at least 12 bytes, each tensor info at least 24.
  if (n_kv > c.left() / 12 || n_tensors > c.left() / 24)
    throw std::invalid_argument(path_ + " is truncated or corrupt: counts (" + std::to_string(n_kv) + " keys, " +
                                std::to_string(n_tensors) + " tensors) exceed the file size");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.string("metadata key");
    GgufValue v;
    c.value(c.type("metadata type"), v, 0);
    kv_[std::move(key)] = std::move(v);
  }
  // Foreign and newer files are told apart before their tensors are looked at.
  const GgufValue* version = find("edgelut.format_version");
  if (!version) {
    if (find("general.architecture"))
      throw std::invalid_argument(path_ + " is a llama.cpp GGUF, not an edgelut model file; convert it with "
                                  "edgelut quantize");
    throw std::invalid_argument(path_ + " is a GGUF file without edgelut metadata; convert it with edgelut quantize");
  }
  format_version_ = static_cast<uint32_t>(get_int("edgelut.format_version"));
  if (format_version_ > kModelFormatVersion)
    fail("format version " + std::to_string(format_version_) + " is newer than this edgelut reads (" +
         std::to_string(kModelFormatVersion) + "); upgrade edgelut");
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32) fail("general.alignment must be a uint32");
    alignment_ = static_cast<uint64_t>(a->i);
  }
  if (alignment_ != kModelAlignment) fail("alignment " + std::to_string(alignment_) + " is not 4096");

  std::vector<uint64_t> rel_offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    FileTensor t;
    t.name = c.string("tensor name");
    const uint32_t n_dims = c.read<uint32_t>("tensor rank");
    if (n_dims == 0 || n_dims > kMaxDims) fail("tensor " + t.name + " has rank " + std::to_string(n_dims));
    int64_t elems = 1;
    std::vector<int64_t> dims(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > (uint64_t{1} << 40) || static_cast<uint64_t>(elems) > (uint64_t{1} << 48) / dim)
        fail("tensor " + t.name + " has a bad dimension " + std::to_string(dim));
      dims[d] = static_cast<int64_t>(dim);
      elems *= static_cast<int64_t>(dim);
    }
    t.shape.assign(dims.rbegin(), dims.rend());  // GGUF lists the fastest dimension first
    t.ggml_type = c.read<uint32_t>("tensor type");
    const int64_t esize = ggml_type_size(t.ggml_type);
    if (!esize) fail("tensor " + t.name + " has GGUF type " + std::to_string(t.ggml_type) + ", not F32/F16/I8");
    t.nbytes = static_cast<uint64_t>(elems * esize);
    rel_offsets.push_back(c.read<uint64_t>("tensor offset"));
    if (tensor_index_.count(t.name)) fail("duplicate tensor " + t.name);
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  data_offset_ = align_up(c.pos(), alignment_);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    FileTensor& t = tensors_[i];
    const uint64_t rel = rel_offsets[i];
    if (rel % alignment_) fail("tensor " + t.name + " is not aligned to " + std::to_string(alignment_));
    if (rel > size_ || data_offset_ > size_ - rel || t.nbytes > size_ - data_offset_ - rel)
      fail("is truncated: tensor " + t.name + " ends past the end of the file (" + std::to_string(size_) +
           " bytes)");
    t.offset = data_offset_ + rel;
  }
  read_tensor_meta();
  read_hparams();
  if (find("edgelut.layer.offsets")) {
    const auto& offs = get_int_array("edgelut.layer.offsets");
    const auto& sizes = get_int_array("edgelut.layer.sizes");
    if (offs.size() != sizes.size()) fail("edgelut.layer.offsets and edgelut.layer.sizes differ in length");
    for (size_t i = 0; i < offs.size(); ++i) {
      const uint64_t o = static_cast<uint64_t>(offs[i]), s = static_cast<uint64_t>(sizes[i]);
      if (o > size_ || data_offset_ > size_ - o || s > size_ - data_offset_ - o)
        fail("is truncated: layer " + std::to_string(i) + " ends past the end of the file");
      layers_.push_back({data_offset_ + o, s});
    }
  }
}

void ModelFile::read_tensor_meta() {
  for (FileTensor& t : tensors_) {
    const std::string key = "edgelut.tensor." + t.name;
    if (!find(key + ".qtype") || !find(key + ".crc32")) fail("tensor " + t.name + " has no edgelut.tensor metadata");
    t.qtype = get_string(key + ".qtype");
    t.crc32 = static_cast<uint32_t>(get_int(key + ".crc32"));
    if (t.qtype == "f32" || t.qtype == "f16") {
      if (t.ggml_type != (t.qtype == "f32" ? 0u : 1u)) fail("tensor " + t.name + " is not stored as " + t.qtype);
      continue;
    }
    t.packed = true;
    PackedShape& s = t.pshape;
    try {
      s.qtype = qtype_from_name(t.qtype);
      s.n = get_int(key + ".n");
      s.k = get_int(key + ".k");
      s.group = static_cast<int32_t>(get_int(key + ".group"));
      s.asym = get_int(key + ".asym") != 0;
      validate_shape(s);
    } catch (const std::invalid_argument& e) {
      fail("tensor " + t.name + ": " + e.what());
    }
    if (t.ggml_type != 24 || t.shape.size() != 1 || t.nbytes != s.total_bytes())
      fail("tensor " + t.name + " holds " + std::to_string(t.nbytes) + " bytes, its packed shape needs " +
           std::to_string(s.total_bytes()));
    t.shape = {s.n, s.k};
  }
}

void ModelFile::read_hparams() {
  ModelHParams& h = hparams_;
  h.architecture = get_string("general.architecture");
  if (h.architecture != "llama" && h.architecture != "qwen2" && h.architecture != "qwen3" &&
      h.architecture != "gemma3" && h.architecture != "phi3")
    fail("unsupported architecture " + h.architecture);
  const std::string a = h.architecture + ".";
  h.vocab_size = get_int(a + "vocab_size");
  h.hidden_size = get_int(a + "embedding_length");
  h.intermediate_size = get_int(a + "feed_forward_length");
  h.n_layers = get_int(a + "block_count");
  h.n_heads = get_int(a + "attention.head_count");
  h.n_kv_heads = get_int(a + "attention.head_count_kv");
  h.head_dim = get_int(a + "attention.key_length");
  h.context_length = get_int(a + "context_length");
  h.rms_norm_eps = get_float(a + "attention.layer_norm_rms_epsilon");
  h.rope_theta = get_float(a + "rope.freq_base");
  if (find("edgelut.rope_style")) h.rope_style = get_string("edgelut.rope_style");
  if (find("edgelut.tie_embeddings")) h.tie_embeddings = get_int("edgelut.tie_embeddings") != 0;
  if (find("edgelut.attn_bias")) h.attn_bias = get_int("edgelut.attn_bias") != 0;
  if (h.n_layers < 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 || h.n_heads % h.n_kv_heads)
    fail("bad head counts (" + std::to_string(h.n_heads) + " heads, " + std::to_string(h.n_kv_heads) +
         " kv heads)");
}

const GgufValue* ModelFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

int64_t ModelFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key " + key);
  if (v->type == GgufType::String || v->type == GgufType::Array || is_float(v->type))
    fail("key " + key + " is not an integer");
  return v->i;
}

double ModelFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key " + key);
  if (is_float(v->type)) return v->f;
  return static_cast<double>(get_int(key));
}

const std::string& ModelFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key " + key);
  if (v->type != GgufType::String) fail("key " + key + " is not a string");
  return v->s;
}

const std::vector<int64_t>& ModelFile::get_int_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key " + key);
  if (v->type != GgufType::Array || v->elem == GgufType::String || v->elem == GgufType::Array || is_float(v->elem))
    fail("key " + key + " is not an integer array");
  return v->ints;
}

const FileTensor* ModelFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

PackedView ModelFile::packed_view(const FileTensor& t) const {
  if (!t.packed) fail("tensor " + t.name + " is not packed");
  return PackedView::over(t.pshape, bytes(t));
}

void ModelFile::verify_crcs() const {
  for (const FileTensor& t : tensors_) {
    const uint32_t got = crc32(0, bytes(t), t.nbytes);
    if (got != t.crc32) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "has CRC32 %08x, expected %08x", got, t.crc32);
      throw std::invalid_argument(path_ + " is corrupt: tensor " + t.name + " " + buf);
    }
  }
}

}  // namespace edgelut
