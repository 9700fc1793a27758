// The edgelut model file reader (spec: docs/FORMAT.md, "Model file").
//
// The container is read by parse_gguf (gguf.h: bounded, every offset and size
// checked against the file); this class adds what makes a GGUF an edgelut
// model: the format version, 4096-byte alignment, per-tensor edgelut metadata
// and CRC32s, the layer byte ranges and hyper-parameters in range. Unknown
// metadata keys of any GGUF type are parsed and kept, so a newer writer's
// extra keys never break an older reader.
//
// Errors: FileAccessError (a std::runtime_error) when the path cannot be read
// as a file (missing, unreadable, directory, FIFO, device), ModelFileError (a
// std::invalid_argument) when its content is wrong (truncated, corrupt,
// foreign, newer format version, impossible hyper-parameters); every message
// is one line and starts with the file path.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../kernels/layout.h"
#include "gguf.h"

namespace edgelut {

constexpr uint32_t kModelFormatVersion = 1;
constexpr uint64_t kModelAlignment = 4096;

// One tensor: where its bytes are and what they mean.
struct FileTensor {
  std::string name;
  std::string qtype;           // "q1".."q4", "tq" (packed) or "f32", "f16"
  std::vector<int64_t> shape;  // logical shape, outermost first: (n, k) for packed
  uint32_t ggml_type = 0;      // GGUF tensor type as stored (I8 for packed)
  uint64_t offset = 0;         // absolute file offset
  uint64_t nbytes = 0;
  uint32_t crc32 = 0;
  bool packed = false;
  PackedShape pshape;  // valid when packed
};

// A layer's tensors as one contiguous byte range (absolute offset).
struct LayerRange {
  uint64_t offset = 0;
  uint64_t size = 0;
};

// Architecture hyper-parameters read from the standard {arch}.* keys.
struct ModelHParams {
  std::string architecture;
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, n_layers = 0;
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0, context_length = 0;
  double rms_norm_eps = 1e-5, rope_theta = 10000.0;
  std::string rope_style = "neox";
  bool tie_embeddings = false, attn_bias = false;
};

class ModelFile {
 public:
  // Maps (or reads, FileMemory::kRead) and parses `path`; verifies every
  // tensor's CRC32 unless verify_crc is false.
  explicit ModelFile(const std::string& path, bool verify_crc = true, FileMemory memory = FileMemory::kMap);
  ModelFile(const ModelFile&) = delete;
  ModelFile& operator=(const ModelFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_->size(); }
  FileMemory memory() const { return file_->memory(); }
  uint64_t huge_bytes() const { return file_->huge_bytes(); }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t alignment() const { return alignment_; }
  uint32_t format_version() const { return format_version_; }
  const ModelHParams& hparams() const { return hparams_; }

  // Metadata. The typed getters throw std::invalid_argument naming the key when
  // it is missing or has another type.
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<std::string>& keys() const { return keys_; }  // in file order
  const GgufValue* find(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // also accepts integers
  const std::string& get_string(const std::string& key) const;
  const std::vector<int64_t>& get_int_array(const std::string& key) const;

  const std::vector<FileTensor>& tensors() const { return tensors_; }
  const FileTensor* tensor(const std::string& name) const;  // nullptr when absent
  const std::vector<LayerRange>& layers() const { return layers_; }

  const uint8_t* bytes(const FileTensor& t) const { return file_->data() + t.offset; }
  // The packed bytes of a packed tensor, ready for the kernels.
  PackedView packed_view(const FileTensor& t) const;
  // Throws std::invalid_argument naming the first tensor whose CRC32 differs.
  void verify_crcs() const;

 private:
  void parse();
  void read_hparams();
  void read_tensor_meta();
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  uint64_t data_offset_ = 0;
  uint64_t alignment_ = 32;
  uint32_t format_version_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<std::string> keys_;
  std::vector<FileTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::vector<LayerRange> layers_;
  ModelHParams hparams_;
};

}  // namespace edgelut
