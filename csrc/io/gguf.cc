// GGUF parsing with a bounds-checked cursor (see gguf.h for the contract).
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_set>

namespace edgelut {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;
// No real tensor dimension or element count comes near these; they keep every
// product below in range of uint64.
constexpr uint64_t kMaxDim = uint64_t{1} << 40;
constexpr uint64_t kMaxElements = uint64_t{1} << 48;

// The ggml tensor types (ggml.h `enum ggml_type`); retired ids are absent.
// Q8_1 is left out: ggml uses it for activations only, and the gguf
// package's size for it differs from ggml's, so no writer stores it.
const std::vector<GgmlTypeInfo> kGgmlTypes = {
    {0, "F32", 1, 4},        {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},     {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},  {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},  {14, "Q6_K", 256, 210},
    {15, "Q8_K", 256, 292},  {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98},
    {19, "IQ1_S", 256, 50},  {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},        {25, "I16", 1, 2},       {26, "I32", 1, 4},
    {27, "I64", 1, 8},       {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},  {30, "BF16", 1, 2},
    {34, "TQ1_0", 256, 54},  {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},   {40, "NVFP4", 64, 36},
    {41, "Q1_0", 128, 18},
};

uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (!len || i + len > n) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t j = 1; j < len; ++j) {
      if ((p[i + j] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + j] & 0x3f);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

// Reads the container front to back; `where` says what is being read, for messages.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, const std::string& path) : p_(p), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  void set_where(std::string where) { where_ = std::move(where); }

  [[noreturn]] void fail(const std::string& what) const { throw ModelFileError(path_ + ": " + printable(what)); }
  [[noreturn]] void fail_here(const std::string& what) const {
    fail(what + " at byte " + std::to_string(pos_) + " (in " + where_ + ")");
  }

  void need(uint64_t n) const {
    if (n > left())
      fail("truncated at byte " + std::to_string(pos_) + " while reading " + where_ + " (needs " +
           std::to_string(n) + " bytes, " + std::to_string(left()) + " left)");
  }
  template <typename T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // the format is little-endian, as are all targets
    pos_ += sizeof(T);
    return v;
  }
  std::string string() {
    const uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    if (!valid_utf8(s)) fail_here("a string that is not valid UTF-8");
    pos_ += n;
    return s;
  }

  GgufType type() {
    const uint32_t t = read<uint32_t>();
    if (t > static_cast<uint32_t>(GgufType::F64)) {
      pos_ -= 4;
      fail_here("unknown metadata value type " + std::to_string(t));
    }
    return static_cast<GgufType>(t);
  }

  void scalar(GgufType t, int64_t* i, double* f) {
    switch (t) {
      case GgufType::U8: *i = read<uint8_t>(); break;
      case GgufType::I8: *i = read<int8_t>(); break;
      case GgufType::Bool: {
        const uint8_t b = read<uint8_t>();
        if (b > 1) {
          pos_ -= 1;
          fail_here("a bool of value " + std::to_string(b));
        }
        *i = b;
        break;
      }
      case GgufType::U16: *i = read<uint16_t>(); break;
      case GgufType::I16: *i = read<int16_t>(); break;
      case GgufType::U32: *i = read<uint32_t>(); break;
      case GgufType::I32: *i = read<int32_t>(); break;
      case GgufType::U64: *i = static_cast<int64_t>(read<uint64_t>()); break;
      case GgufType::I64: *i = read<int64_t>(); break;
      case GgufType::F32: *f = read<float>(); break;
      case GgufType::F64: *f = read<double>(); break;
      default: fail_here("a non-scalar type where a scalar was expected");
    }
  }

  void value(GgufType t, GgufValue& v, int depth) {
    v.type = t;
    if (t == GgufType::String) {
      v.s = string();
      return;
    }
    if (t != GgufType::Array) {
      scalar(t, &v.i, &v.f);
      return;
    }
    if (depth >= kMaxArrayDepth) fail_here("arrays nested more than " + std::to_string(kMaxArrayDepth) + " deep");
    v.elem = type();
    v.count = read<uint64_t>();
    // Every element takes at least one byte (a string or an array at least 8, 12).
    const uint64_t min_each = v.elem == GgufType::String ? 8 : v.elem == GgufType::Array ? 12 : scalar_size(v.elem);
    if (v.count > left() / min_each)
      fail("truncated or corrupt: array length " + std::to_string(v.count) + " at byte " + std::to_string(pos_ - 8) + " (in " + where_ +
           ") needs at least " + std::to_string(min_each) + " bytes per element, only " + std::to_string(left()) +
           " bytes are left");
    if (v.elem == GgufType::String) {
      v.strings.reserve(v.count);
      for (uint64_t j = 0; j < v.count; ++j) v.strings.push_back(string());
    } else if (v.elem == GgufType::Array) {
      v.items.resize(v.count);
      for (uint64_t j = 0; j < v.count; ++j) value(GgufType::Array, v.items[j], depth + 1);
    } else if (v.elem == GgufType::F32 || v.elem == GgufType::F64) {
      v.floats.resize(v.count);
      int64_t unused = 0;
      for (uint64_t j = 0; j < v.count; ++j) scalar(v.elem, &unused, &v.floats[j]);
    } else {
      v.ints.resize(v.count);
      double unused = 0;
      for (uint64_t j = 0; j < v.count; ++j) scalar(v.elem, &v.ints[j], &unused);
    }
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
  std::string where_ = "the header";
};

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

const std::vector<GgmlTypeInfo>& ggml_types() { return kGgmlTypes; }

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
  for (const GgmlTypeInfo& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

std::string printable(const std::string& what) {
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
  return clean;
}

GgufContents parse_gguf(const uint8_t* p, uint64_t size, const std::string& path) {
  Cursor c(p, size, path);
  GgufContents g;
  c.set_where("the GGUF magic");
  if (size < 4 || c.read<uint32_t>() != kGgufMagic) c.fail("not a GGUF file (no GGUF magic)");
  c.set_where("the GGUF version");
  g.version = c.read<uint32_t>();
  if (g.version < 2 || g.version > 3) c.fail("unsupported GGUF version " + std::to_string(g.version) + " (reads 2 and 3)");
  c.set_where("the tensor count");
  const uint64_t n_tensors = c.read<uint64_t>();
  c.set_where("the metadata count");
  const uint64_t n_kv = c.read<uint64_t>();
  // A key/value takes at least 13 bytes (key length, type, one byte of value);
  // a tensor info at least 32 (name length, rank, one dimension, type, offset).
  if (n_kv > c.left() / 13)
    c.fail("truncated or corrupt: metadata count " + std::to_string(n_kv) + " does not fit in the " + std::to_string(size) + "-byte file");
  if (n_tensors > c.left() / 32)
    c.fail("truncated or corrupt: tensor count " + std::to_string(n_tensors) + " does not fit in the " + std::to_string(size) +
           "-byte file");

  g.keys.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    c.set_where("the key of metadata entry " + std::to_string(i));
    std::string key = c.string();
    if (g.kv.count(key)) c.fail("duplicate metadata key '" + key + "'");
    c.set_where("the type of key '" + key + "'");
    const GgufType t = c.type();
    c.set_where("the value of key '" + key + "'");
    GgufValue v;
    c.value(t, v, 0);
    g.keys.push_back(key);
    g.kv.emplace(std::move(key), std::move(v));
  }
  if (auto it = g.kv.find("general.alignment"); it != g.kv.end()) {
    const GgufValue& a = it->second;
    if (a.type != GgufType::U32)
      c.fail(std::string("field 'general.alignment' is a ") + gguf_type_name(a.type) + ", expected u32");
    const uint64_t al = static_cast<uint64_t>(a.i);
    if (al == 0 || (al & (al - 1)) || al > kMaxAlignment)
      c.fail("field 'general.alignment' has impossible value " + std::to_string(al) +
             " (a power of two up to 2^20)");
    g.alignment = al;
  }

  std::unordered_set<std::string> names;
  std::vector<uint64_t> rel_offsets;
  g.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    c.set_where("the name of tensor " + std::to_string(i));
    t.name = c.string();
    if (!names.insert(t.name).second) c.fail("duplicate tensor name '" + t.name + "'");
    c.set_where("the info of tensor '" + t.name + "'");
    const uint32_t n_dims = c.read<uint32_t>();
    if (n_dims == 0 || n_dims > kMaxDims)
      c.fail("tensor '" + t.name + "' has rank " + std::to_string(n_dims) + " (1.." + std::to_string(kMaxDims) + ")");
    uint64_t elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>();
      if (dim == 0 || dim > kMaxDim || elems > kMaxElements / dim)
        c.fail("tensor '" + t.name + "' has impossible dimension " + std::to_string(dim));
      t.ne.push_back(dim);
      elems *= dim;
    }
    t.type = c.read<uint32_t>();
    const GgmlTypeInfo* info = ggml_type_info(t.type);
    if (!info) c.fail("tensor '" + t.name + "' has unknown ggml type " + std::to_string(t.type));
    if (t.ne[0] % info->block)
      c.fail("tensor '" + t.name + "' has " + std::to_string(t.ne[0]) + " columns, not a multiple of the " +
             info->name + " block of " + std::to_string(info->block));
    t.nbytes = elems / info->block * info->bytes;
    rel_offsets.push_back(c.read<uint64_t>());
    g.tensors.push_back(std::move(t));
  }
  g.data_offset = (c.pos() + g.alignment - 1) / g.alignment * g.alignment;
  if (n_tensors && g.data_offset > size)
    c.fail("truncated: the tensor data would start at byte " + std::to_string(g.data_offset) + ", past the end (" +
           std::to_string(size) + " bytes)");
  for (size_t i = 0; i < g.tensors.size(); ++i) {
    GgufTensorInfo& t = g.tensors[i];
    const uint64_t rel = rel_offsets[i];
    if (rel % g.alignment)
      c.fail("tensor '" + t.name + "' has offset " + std::to_string(rel) + ", not a multiple of the alignment " +
             std::to_string(g.alignment));
    const uint64_t room = size - g.data_offset;
    if (rel > room || t.nbytes > room - rel)
      c.fail("truncated: tensor '" + t.name + "' (" + std::to_string(t.nbytes) + " bytes at data offset " +
             std::to_string(rel) + ") ends past the end of the file (" + std::to_string(size) + " bytes)");
    t.offset = g.data_offset + rel;
  }
  return g;
}

void require_regular_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw FileAccessError(path + ": cannot open: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw FileAccessError(path + " is " + kind_of(st.st_mode) + ", not a model file");
}

MappedFile::MappedFile(const std::string& path, FileMemory memory) {
  require_regular_file(path);
  // O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not wait for a writer.
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) throw FileAccessError(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw FileAccessError(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw FileAccessError(path + " is " + kind_of(st.st_mode) + ", not a model file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd_);
    throw ModelFileError(path + ": empty file (0 bytes), not a model file");
  }
  // A copy pays only in huge pages, and only fits in memory the kernel can
  // spare: it can drop a mapping's clean pages under pressure and read them
  // again, but not anonymous ones. Otherwise, or when the allocation is
  // refused (overcommit limits), the file is mapped.
  const uint64_t available = memory_available();
  if (memory == FileMemory::kRead && huge_pages_available() && (available == 0 || size_ <= available)) {
    try {
      copy_ = HugeMemory(size_, path);
    } catch (const std::runtime_error&) {
    }
  }
  if (copy_.data()) {
    try {
      read_whole(fd_, path, copy_.data(), size_);
    } catch (...) {
      ::close(fd_);
      throw;
    }
    copy_.protect_read_only();
    map_ = copy_.data();
    ::close(fd_);  // everything is read: nothing later depends on the file
    fd_ = -1;
    return;
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    ::close(fd_);
    throw FileAccessError(path + ": cannot map: " + std::strerror(err));
  }
  map_ = static_cast<const uint8_t*>(m);
}

MappedFile::~MappedFile() {
  if (map_ && !copy_.data()) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace edgelut
