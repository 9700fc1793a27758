// A bounded reader of GGUF containers (edgelut model files and llama.cpp sources).
//
// parse_gguf() reads the header, every metadata value (all GGUF value types,
// nested arrays included) and every tensor info of a GGUF file held in memory.
// Every count, length, type and offset is checked against the bytes that are
// left before anything is allocated or looped over, so a corrupt file costs at
// most its own size in memory and time. Duplicate keys and duplicate tensor
// names are refused. Tensor byte sizes come from one table of ggml types.
//
// Errors:
//   ModelFileError (a std::invalid_argument): the content is wrong; the one-line
//     message starts with the path and says what and where ("m.elut: truncated
//     at byte 1234 while reading the value of key 'general.name'").
//   FileAccessError (a std::runtime_error): the path cannot be read as a model
//     file at all (missing, unreadable, a directory, FIFO or device).
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "huge_memory.h"

namespace edgelut {

class ModelFileError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class FileAccessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// GGUF metadata value types (the numbering of the GGUF spec).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};

const char* gguf_type_name(GgufType t);

// One metadata value. Integers and bools are held as int64 (a uint64 above
// 2^63 is stored bit for bit: read it back with `type` in mind), floats as
// double. An array keeps its elements in the vector matching `elem`; the
// elements of a nested array are in `items`.
struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType elem = GgufType::U8;  // element type of an array
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufValue> items;
  uint64_t count = 0;  // array length
};

// One row per ggml tensor type: a tensor of ne elements (ne0 a multiple of
// `block`) takes ne / block * `bytes` bytes.
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  uint32_t block;
  uint32_t bytes;
};

const GgmlTypeInfo* ggml_type_info(uint32_t id);  // nullptr for an unknown or retired type
const std::vector<GgmlTypeInfo>& ggml_types();

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF order: the fastest-varying dimension first
  uint32_t type = 0;         // ggml type id
  uint64_t offset = 0;       // absolute file offset
  uint64_t nbytes = 0;
};

struct GgufContents {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute offset of the tensor data section
  std::map<std::string, GgufValue> kv;
  std::vector<std::string> keys;  // in file order
  std::vector<GgufTensorInfo> tensors;
};

// Parses the GGUF container in p[0, size); `path` names the file in messages.
GgufContents parse_gguf(const uint8_t* p, uint64_t size, const std::string& path);

// How a file's bytes are held in memory: a private mapping of the file (shared
// with the page cache, nothing copied), or the file read once into anonymous
// memory advised for huge pages (huge_memory.h: faster to stream). kRead asks
// for the copy; MappedFile maps instead where the kernel has no transparent
// huge pages, the file is larger than MemAvailable, or the memory is refused
// (memory() says which happened).
enum class FileMemory { kMap, kRead };

// A read-only view of a regular file's bytes, mapped or read (FileMemory). The
// path is stat'ed before it is opened (a directory, FIFO, socket or device is
// refused without opening it, so a FIFO never blocks), opened with O_NONBLOCK
// and checked again with fstat.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path, FileMemory memory = FileMemory::kMap);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return map_; }
  uint64_t size() const { return size_; }
  FileMemory memory() const { return copy_.data() ? FileMemory::kRead : FileMemory::kMap; }
  // Bytes of the read copy the kernel backs with huge pages (0 for a mapping).
  uint64_t huge_bytes() const { return copy_.huge_bytes(); }

 private:
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  HugeMemory copy_;  // FileMemory::kRead: the bytes map_ points into
};

// Throws FileAccessError unless `path` is an existing regular file (stat only).
void require_regular_file(const std::string& path);

// `what` with bytes outside printable ASCII escaped as \xNN (names and keys
// come from the file; a message must stay one valid line).
std::string printable(const std::string& what);

}  // namespace edgelut
