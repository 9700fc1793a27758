// An edgelut model file on top of the bounded GGUF reader (gguf.h).
#include "model_file.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "../kernels/packed_matrix.h"
#include "crc32.h"

namespace edgelut {

namespace {

// Upper bounds of the hyper-parameters: far above any model edgelut targets,
// low enough that sizes computed from them cannot overflow.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxWidth = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 1 << 12;
constexpr int64_t kMaxHeads = 1 << 12;
constexpr int64_t kMaxContext = int64_t{1} << 24;

bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

}  // namespace

ModelFile::ModelFile(const std::string& path, bool verify_crc, FileMemory memory)
    : path_(path), file_(std::make_unique<MappedFile>(path, memory)) {
  parse();
  if (verify_crc) verify_crcs();
}

void ModelFile::fail(const std::string& what) const { throw ModelFileError(path_ + ": " + printable(what)); }

void ModelFile::parse() {
  if (file_->size() < 4 || std::memcmp(file_->data(), "GGUF", 4) != 0)
    throw ModelFileError(path_ + " is not an edgelut model file (no GGUF magic)");
  GgufContents g = parse_gguf(file_->data(), file_->size(), path_);
  kv_ = std::move(g.kv);
  keys_ = std::move(g.keys);
  alignment_ = g.alignment;
  data_offset_ = g.data_offset;
  // Foreign and newer files are told apart before their tensors are looked at.
  const GgufValue* version = find("edgelut.format_version");
  if (!version) {
    if (find("general.architecture"))
      throw ModelFileError(path_ + " is a llama.cpp GGUF, not an edgelut model file; convert it with edgelut quantize");
    throw ModelFileError(path_ + " is a GGUF file without edgelut metadata; convert it with edgelut quantize");
  }
  const int64_t fv = get_int("edgelut.format_version");
  if (fv < 1) fail("field 'edgelut.format_version' has impossible value " + std::to_string(fv));
  if (fv > static_cast<int64_t>(kModelFormatVersion))
    fail("format version " + std::to_string(fv) + " is newer than this edgelut reads (" +
         std::to_string(kModelFormatVersion) + "); upgrade edgelut");
  format_version_ = static_cast<uint32_t>(fv);
  if (alignment_ != kModelAlignment) fail("alignment " + std::to_string(alignment_) + " is not 4096");

  for (GgufTensorInfo& gt : g.tensors) {
    FileTensor t;
    t.name = std::move(gt.name);
    t.shape.assign(gt.ne.rbegin(), gt.ne.rend());  // GGUF lists the fastest dimension first
    t.ggml_type = gt.type;
    t.offset = gt.offset;
    t.nbytes = gt.nbytes;
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  read_tensor_meta();
  read_hparams();
  if (find("edgelut.layer.offsets") || find("edgelut.layer.sizes")) {
    const auto& offs = get_int_array("edgelut.layer.offsets");
    const auto& sizes = get_int_array("edgelut.layer.sizes");
    if (offs.size() != sizes.size()) fail("edgelut.layer.offsets and edgelut.layer.sizes differ in length");
    const uint64_t size = file_size();
    for (size_t i = 0; i < offs.size(); ++i) {
      const uint64_t o = static_cast<uint64_t>(offs[i]), s = static_cast<uint64_t>(sizes[i]);
      if (o > size || data_offset_ > size - o || s > size - data_offset_ - o)
        fail("truncated: layer " + std::to_string(i) + " ends past the end of the file");
      if (s == 0) fail("field 'edgelut.layer.sizes' gives layer " + std::to_string(i) + " size 0");
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
      // Absent in files without two-level scales (and in files older than them).
      if (find(key + ".super")) {
        const int64_t sb = get_int(key + ".super");
        if (sb < 0 || sb > 4096) fail("tensor " + t.name + ": super-block size " + std::to_string(sb) + " is out of range");
        s.super = static_cast<int32_t>(sb);
      }
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
      h.architecture != "gemma3" && h.architecture != "phi3" && h.architecture != "bitnet")
    fail("unsupported architecture '" + h.architecture +
         "' (edgelut runs llama, qwen2, qwen3, gemma3, phi3 and bitnet)");
  const std::string a = h.architecture + ".";
  // Every integer in [lo, hi]; a key named in the message.
  auto ranged = [&](const std::string& key, int64_t lo, int64_t hi) {
    const int64_t v = get_int(key);
    if (v < lo || v > hi)
      fail("field '" + key + "' has impossible value " + std::to_string(v) + " (expected " + std::to_string(lo) +
           ".." + std::to_string(hi) + ")");
    return v;
  };
  h.vocab_size = ranged(a + "vocab_size", 1, kMaxVocab);
  h.hidden_size = ranged(a + "embedding_length", 1, kMaxWidth);
  h.intermediate_size = ranged(a + "feed_forward_length", 1, kMaxWidth);
  h.n_layers = ranged(a + "block_count", 1, kMaxLayers);
  h.n_heads = ranged(a + "attention.head_count", 1, kMaxHeads);
  h.n_kv_heads = ranged(a + "attention.head_count_kv", 1, h.n_heads);
  h.head_dim = ranged(a + "attention.key_length", 2, kMaxWidth);
  h.context_length = ranged(a + "context_length", 1, kMaxContext);
  if (h.n_heads % h.n_kv_heads)
    fail("field '" + a + "attention.head_count' (" + std::to_string(h.n_heads) + ") is not a multiple of '" + a +
         "attention.head_count_kv' (" + std::to_string(h.n_kv_heads) + ")");
  if (h.head_dim % 2) fail("field '" + a + "attention.key_length' has impossible value " +
                           std::to_string(h.head_dim) + " (RoPE needs an even head size)");
  h.rms_norm_eps = get_float(a + "attention.layer_norm_rms_epsilon");
  if (!std::isfinite(h.rms_norm_eps) || !(h.rms_norm_eps > 0) || !(h.rms_norm_eps < 1))
    fail("field '" + a + "attention.layer_norm_rms_epsilon' has impossible value " + std::to_string(h.rms_norm_eps) +
         " (expected a finite number in (0, 1))");
  h.rope_theta = get_float(a + "rope.freq_base");
  if (!std::isfinite(h.rope_theta) || !(h.rope_theta >= 1) || !(h.rope_theta <= 1e12))
    fail("field '" + a + "rope.freq_base' has impossible value " + std::to_string(h.rope_theta) +
         " (expected a finite number in [1, 1e12])");
  if (find("edgelut.rope_style")) h.rope_style = get_string("edgelut.rope_style");
  if (h.rope_style != "neox" && h.rope_style != "adjacent")
    fail("field 'edgelut.rope_style' has impossible value '" + h.rope_style + "' (neox or adjacent)");
  if (find("edgelut.tie_embeddings")) h.tie_embeddings = get_int("edgelut.tie_embeddings") != 0;
  if (find("edgelut.attn_bias")) h.attn_bias = get_int("edgelut.attn_bias") != 0;

  // Keys that only the Python side and the tokenizer use are checked here too, so
  // that every entry point accepts and refuses the same files.
  auto ids_below = [&](const std::string& key, int64_t n) {
    if (!find(key)) return;
    for (int64_t v : get_int_array(key))
      if (v < 0 || v >= n) fail("field '" + key + "' holds " + std::to_string(v) + ", outside 0.." + std::to_string(n - 1));
  };
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    if (find(key)) ranged(key, 0, h.vocab_size - 1);
  ids_below("edgelut.eos_token_ids", h.vocab_size);
  const int64_t world = find("edgelut.shard.world_size") ? ranged("edgelut.shard.world_size", 1, 1024) : 1;
  if (find("edgelut.shard.rank")) ranged("edgelut.shard.rank", 0, world - 1);
  ids_below("edgelut.shard.heads", h.n_heads);
  ids_below("edgelut.shard.kv_heads", h.n_kv_heads);
  ids_below("edgelut.shard.ffn_columns", h.intermediate_size + 1);
  for (const char* key : {"general.name", "tokenizer.chat_template", "edgelut.recipe", "edgelut.rope_scaling",
                          "edgelut.tokenizer.json", "edgelut.tokenizer.bos_token", "edgelut.tokenizer.eos_token"})
    if (find(key)) get_string(key);
  if (find("tokenizer.ggml.add_bos_token")) get_int("tokenizer.ggml.add_bos_token");
}

const GgufValue* ModelFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

int64_t ModelFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key '" + key + "'");
  if (v->type == GgufType::String || v->type == GgufType::Array || is_float(v->type))
    fail("field '" + key + "' is a " + gguf_type_name(v->type) + ", expected an integer");
  return v->i;
}

double ModelFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key '" + key + "'");
  if (is_float(v->type)) return v->f;
  return static_cast<double>(get_int(key));
}

const std::string& ModelFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key '" + key + "'");
  if (v->type != GgufType::String) fail("field '" + key + "' is a " + gguf_type_name(v->type) + ", expected a string");
  return v->s;
}

const std::vector<int64_t>& ModelFile::get_int_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("missing key '" + key + "'");
  if (v->type != GgufType::Array || v->elem == GgufType::String || v->elem == GgufType::Array || is_float(v->elem))
    fail("field '" + key + "' is not an integer array");
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
      throw ModelFileError(path_ + " is corrupt: tensor " + printable(t.name) + " " + buf);
    }
  }
}

}  // namespace edgelut
