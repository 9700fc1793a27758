#include "from_file.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "../io/crc32.h"
#include "../kernels/fp16.h"
#include "shard_slice.h"

namespace edgelut {

namespace {

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// A problem with the file's content (EDGELUT_ERR_INVALID_MODEL in the C ABI).
void require_file(bool ok, const std::string& msg) {
  if (!ok) throw ModelFileError(msg);
}

// Owns the mapping, the float32 copies of f16 tensors and, when paging, the
// copies of the pinned tensors, as long as the engine.
struct FileStore {
  std::shared_ptr<ModelFile> file;
  std::unordered_map<std::string, std::vector<float>> converted;
  std::unordered_map<std::string, HugeMemory> pinned;
  // When paging, the tensors outside the layers are copied out of the mapping
  // at open, so that nothing touches the mapping afterwards: a file that
  // shrinks under a mapping raises SIGBUS on access, while the pager's reads
  // of it fail with an error the engine can report.
  bool copy_pinned = false;
};

const uint8_t* mapping_base(const ModelFile& mf) {
  const FileTensor& t = mf.tensors().front();
  return mf.bytes(t) - t.offset;
}

void drop_mapped(const uint8_t* base, uint64_t begin, uint64_t end) {
  begin &= ~uint64_t{4095};
  if (end > begin) ::madvise(const_cast<uint8_t*>(base + begin), end - begin, MADV_DONTNEED);
}

// ModelFile::verify_crcs reads the whole mapping, which would leave every
// page counted in RSS and make the peak the file size. When paging, check
// each tensor in chunks and unmap each chunk once read, so the peak stays at
// the pinned tensors plus one chunk. The message matches ModelFile's.
void verify_crcs_bounded(const ModelFile& mf) {
  constexpr uint64_t kChunk = uint64_t{8} << 20;
  const uint8_t* base = mapping_base(mf);
  for (const FileTensor& t : mf.tensors()) {
    uint32_t crc = 0;
    for (uint64_t at = 0; at < t.nbytes; at += kChunk) {
      const uint64_t n = std::min(kChunk, t.nbytes - at);
      crc = crc32(crc, mf.bytes(t) + at, n);
      drop_mapped(base, t.offset + at, t.offset + at + n);
    }
    if (crc != t.crc32) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "has CRC32 %08x, expected %08x", crc, t.crc32);
      throw ModelFileError(mf.path() + " is corrupt: tensor " + printable(t.name) + " " + buf);
    }
  }
}

bool is_output_tensor(const std::string& name) { return name == "token_embd.weight" || name == "output.weight"; }

// The lm_head as pager layers: chunks of whole row tiles, each at most
// `max_bytes` in its slot (so the slots stay the size of the largest model
// layer), read as its runs of the codes, scales and mins sections.
// Without an lm_head (a worker's shard) only the embeddings are paged: no chunks.
PagedOutput output_chunks(const ModelFile& mf, uint64_t max_bytes, bool with_lm_head,
                          std::vector<std::vector<ByteRange>>* pieces) {
  const FileTensor* lm = mf.tensor("output.weight");
  if (!lm) lm = mf.tensor("token_embd.weight");
  const FileTensor* embd = mf.tensor("token_embd.weight");
  require(!with_lm_head || (lm && lm->packed),
          mf.path() + ": paging the lm_head needs a packed output.weight or token_embd.weight");
  require(embd && (embd->packed || embd->qtype == "f32"),
          mf.path() + ": paging the embeddings needs a packed or f32 token_embd.weight, not " +
              (embd ? embd->qtype : std::string("none")));
  PagedOutput o;
  if (with_lm_head) o.lm_shape = lm->pshape;
  o.embd_packed = embd->packed;
  if (embd->packed) o.embd_shape = embd->pshape;
  o.embd_offset = embd->offset;
  if (!with_lm_head) {
    o.chunk_tiles = {0};
    return o;
  }
  const PackedShape& s = lm->pshape;
  const uint64_t NG = s.groups(), code_bytes = NG * s.group_code_bytes(), scale_bytes = s.scale_tile_bytes();
  const uint64_t min_bytes = s.min_tile_bytes();
  const uint64_t per_tile = code_bytes + scale_bytes + (s.asym ? min_bytes : 0);
  const int64_t step = std::max<int64_t>(1, static_cast<int64_t>((max_bytes > 192 ? max_bytes - 192 : 0) / per_tile));
  for (int64_t t0 = 0; t0 < s.tiles(); t0 += step) {
    const int64_t t1 = std::min(s.tiles(), t0 + step), nt = t1 - t0;
    o.chunk_tiles.push_back(t0);
    std::vector<ByteRange> ch = {{lm->offset + s.codes_offset() + t0 * code_bytes, nt * code_bytes},
                                 {lm->offset + s.scales_offset() + t0 * scale_bytes, nt * scale_bytes}};
    if (s.asym) ch.push_back({lm->offset + s.mins_offset() + t0 * min_bytes, nt * min_bytes});
    pieces->push_back(std::move(ch));
  }
  o.chunk_tiles.push_back(s.tiles());
  return o;
}

}  // namespace

Config config_from_file(const ModelFile& mf) {
  const ModelHParams& h = mf.hparams();
  Config c;
  c.architecture = h.architecture;
  c.dim = h.hidden_size;
  c.hidden_dim = h.intermediate_size;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = h.head_dim;
  c.vocab_size = h.vocab_size;
  c.norm_eps = static_cast<float>(h.rms_norm_eps);
  c.rope_theta = static_cast<float>(h.rope_theta);
  c.rope_neox = h.rope_style == "neox";
  c.attn_bias = h.attn_bias;
  c.tie_embeddings = h.tie_embeddings;
  // Per-family switches; a file written before they existed is a llama / qwen2 (all off).
  auto flag = [&](const std::string& key) { return mf.find(key) && mf.get_int(key) != 0; };
  auto number = [&](const std::string& key, double fallback) { return mf.find(key) ? mf.get_float(key) : fallback; };
  c.rope_dim = static_cast<int64_t>(number("edgelut.rope_dim", 0));
  c.rope_mscale = static_cast<float>(number("edgelut.rope_mscale", 1.0));
  c.qk_norm = flag("edgelut.qk_norm");
  c.post_norms = flag("edgelut.post_norms");
  if (const GgufValue* act = mf.find("edgelut.ffn_act")) {
    require_file(act->s == "silu" || act->s == "gelu_tanh" || act->s == "relu2",
                 mf.path() + ": edgelut.ffn_act '" + act->s + "' is not supported (silu, gelu_tanh, relu2)");
    c.ffn_gelu = act->s == "gelu_tanh";
    c.ffn_relu2 = act->s == "relu2";
  }
  c.sub_norms = flag("edgelut.sub_norms");
  c.act_int8 = flag("edgelut.act_int8");
  c.embed_scale = static_cast<float>(number("edgelut.embed_scale", 1.0));
  c.ffn_hadamard = static_cast<int64_t>(number("edgelut.ffn_hadamard", 0));
  c.attn_scale = static_cast<float>(number("edgelut.attn_scale", 0.0));
  const std::string window_key = h.architecture + ".attention.sliding_window";
  if (mf.find(window_key)) {
    c.sliding_window = mf.get_int(window_key);
    c.sliding_window_pattern = static_cast<int64_t>(number("edgelut.sliding_window_pattern", 0));
    c.rope_local_theta = static_cast<float>(number("edgelut.rope_local_theta", 0.0));
  }
  const std::string scaling = h.architecture + ".rope.scaling.";
  if (const GgufValue* type = mf.find(scaling + "type"); type && !type->s.empty()) {
    require_file(type->s == "linear" || type->s == "freq_factors" || type->s == "longrope",
                 mf.path() + ": rope scaling '" + type->s + "' is not supported (linear, freq_factors, longrope)");
    if (type->s == "linear") {
      const double factor = mf.get_float(scaling + "factor");
      require_file(std::isfinite(factor) && factor > 0 && factor <= 1024,
                   mf.path() + ": field '" + scaling + "factor' has impossible value " + std::to_string(factor));
      c.rope_linear_factor = static_cast<float>(factor);
    } else {  // Llama 3.1+: one divisor per frequency; LongRoPE: two sets (short, long)
      const GgufValue* f = mf.find("edgelut.rope_freq_factors");
      require_file(f != nullptr, mf.path() + ": rope scaling '" + type->s + "' without edgelut.rope_freq_factors");
      c.rope_freq_factors.assign(f->floats.begin(), f->floats.end());
      if (type->s == "longrope") {
        const GgufValue* lf = mf.find("edgelut.rope_long_factors");
        require_file(lf != nullptr && mf.find("edgelut.rope_original_context"),
                     mf.path() + ": rope scaling 'longrope' without edgelut.rope_long_factors and "
                                 "edgelut.rope_original_context");
        c.rope_long_factors.assign(lf->floats.begin(), lf->floats.end());
        c.rope_original_ctx = mf.get_int("edgelut.rope_original_context");
      }
    }
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw ModelFileError(mf.path() + ": " + e.what());
  }
  return c;
}

ShardSpec shard_from_file(const ModelFile& mf, const Config& c) {
  const int64_t world = mf.find("edgelut.shard.world_size") ? mf.get_int("edgelut.shard.world_size") : 1;
  if (world <= 1) return ShardSpec{};
  const std::string& p = mf.path();
  auto ints = [&](const char* key) -> std::vector<int64_t> {
    require_file(mf.find(key) != nullptr, p + ": shard file without '" + key + "'");
    return mf.get_int_array(key);
  };
  const std::vector<int64_t> heads = ints("edgelut.shard.heads"), kv = ints("edgelut.shard.kv_heads"),
                             cols = ints("edgelut.shard.ffn_columns");
  auto contiguous = [](const std::vector<int64_t>& v) {
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i] != v[i - 1] + 1) return false;
    return !v.empty();
  };
  require_file(contiguous(heads), p + ": field 'edgelut.shard.heads' is not one contiguous range of q heads");
  require_file(cols.size() == 2, p + ": field 'edgelut.shard.ffn_columns' must hold one [begin, end) range");
  ShardSpec s;
  s.q_head_begin = heads.front();
  s.q_head_end = heads.back() + 1;
  s.ffn_begin = cols[0];
  s.ffn_end = cols[1];
  s.lm_head = !mf.find("edgelut.shard.lm_head") || mf.get_int("edgelut.shard.lm_head") != 0;
  if (mf.find("edgelut.shard.embd_columns")) {
    const std::vector<int64_t>& e = mf.get_int_array("edgelut.shard.embd_columns");
    require_file(e.size() == 2, p + ": field 'edgelut.shard.embd_columns' must hold one [begin, end) range");
    s.embd_begin = e[0];
    s.embd_end = e[1];
  }
  if (mf.find("edgelut.shard.layers")) {
    const std::vector<int64_t>& l = mf.get_int_array("edgelut.shard.layers");
    require_file(l.size() == 2, p + ": field 'edgelut.shard.layers' must hold one [begin, end) range");
    s.layer_begin = l[0];
    s.layer_end = l[1];
  }
  try {
    s = s.resolved(c);
  } catch (const std::invalid_argument& e) {
    throw ModelFileError(p + ": " + e.what());
  }
  require_file(contiguous(kv) && kv.front() == s.kv_head_begin && kv.back() + 1 == s.kv_head_end,
               p + ": field 'edgelut.shard.kv_heads' is not the kv heads of q heads [" +
                   std::to_string(s.q_head_begin) + ", " + std::to_string(s.q_head_end) + ")");
  return s;
}

uint64_t fixed_bytes_estimate(const ModelFile& mf, const Config& c, const EngineOptions& o, uint64_t kv_bytes,
                              bool page_output) {
  uint64_t pinned = 0;
  for (const FileTensor& t : mf.tensors())
    if (t.name.rfind("blk.", 0) != 0 && !(page_output && is_output_tensor(t.name))) pinned += t.nbytes;
  const uint64_t C = static_cast<uint64_t>(o.prefill_chunk), D = c.dim, qd = c.n_heads * c.head_dim,
                 kvd = c.n_kv_heads * c.head_dim, F = c.hidden_dim;
  const uint64_t scratch =
      4 * (C * (2 * D + 2 * qd + 2 * kvd + 2 * F + c.head_dim) + c.n_heads * o.n_ctx + c.vocab_size);
  return pinned + kv_bytes + scratch;
}

std::unique_ptr<Engine> engine_from_file(const std::string& path, const EngineOptions& o, const PagingOptions& p,
                                         const std::optional<ShardSpec>& shard, std::shared_ptr<Communicator> comm) {
  auto store = std::make_shared<FileStore>();
  const bool paging = p.window > 0 || p.budget_bytes > 0;
  // A resident model asks to be read into huge pages (MappedFile maps it
  // where that would not pay or fit); a paged one stays mapped (the pager
  // reads its layers), and so does a whole file sliced to a shard (the slice
  // needs only part of it).
  const FileMemory memory = !paging && !shard && !p.mmap ? FileMemory::kRead : FileMemory::kMap;
  store->file = std::make_shared<ModelFile>(path, p.verify_crc && !paging, memory);
  const ModelFile& mf = *store->file;
  require_file(!mf.tensors().empty(), path + ": the model file holds no tensors");
  if (p.verify_crc && paging) verify_crcs_bounded(mf);
  const Config c = config_from_file(mf);
  const ShardSpec file_shard = shard_from_file(mf, c);
  if (const GgufValue* world = mf.find("edgelut.shard.world_size"))
    require_file(world->i <= 1 || comm != nullptr,
                 path + " is shard " + std::to_string(mf.get_int("edgelut.shard.rank") + 1) + " of " +
                     std::to_string(world->i) + " of a model; run it with its other shards (--shards / edgelut worker), "
                     "not as a whole model");
  // A layer split's file holds (and records the byte ranges of) its layer range only.
  const int64_t file_layers = file_shard.resolved(c).n_layers();
  require_file(mf.layers().size() == static_cast<size_t>(file_layers),
          path + ": the file records " + std::to_string(mf.layers().size()) + " layer byte ranges for " +
              std::to_string(file_layers) + " layers");

  require(!p.page_output || paging, path + ": page_output needs paging (a window or a memory budget)");
  store->copy_pinned = paging;
  // Paged embeddings and lm_head are bound against the mapping but never read
  // through it (the engine reads them with the pager), so they are not copied.
  const bool page_output = p.page_output;
  WeightLookup lookup = [store, page_output](const std::string& name, WeightRef* out) {
    const FileTensor* t = store->file->tensor(name);
    if (!t) return false;
    const bool copy = store->copy_pinned && name.rfind("blk.", 0) != 0 && !(page_output && is_output_tensor(name));
    const uint8_t* bytes = store->file->bytes(*t);
    if (copy) {
      auto it = store->pinned.find(name);  // a tied lm_head asks for token_embd twice
      if (it == store->pinned.end()) {
        it = store->pinned.emplace(name, HugeMemory(t->nbytes, "the pinned tensor " + name)).first;
        // In 8 MiB chunks, each unmapped once copied, so the peak is the copy
        // plus one chunk rather than twice the tensor.
        constexpr uint64_t kChunk = uint64_t{8} << 20;
        for (uint64_t at = 0; at < t->nbytes; at += kChunk) {
          const uint64_t n = std::min(kChunk, t->nbytes - at);
          std::memcpy(it->second.data() + at, bytes + at, n);
          drop_mapped(mapping_base(*store->file), t->offset + at, t->offset + at + n);
        }
      }
      bytes = it->second.data();
    }
    out->packed = t->packed;
    if (t->packed) {
      out->view = copy ? PackedView::over(t->pshape, bytes) : store->file->packed_view(*t);
      return true;
    }
    out->shape = t->shape;
    if (t->qtype == "f32") {
      out->data = reinterpret_cast<const float*>(bytes);
      return true;
    }
    require_file(t->qtype == "f16", store->file->path() + ": tensor " + name + " has unsupported type " + t->qtype);
    // Norms and biases only: small, converted once and pinned.
    std::vector<float>& f = store->converted[name];
    const uint16_t* h = reinterpret_cast<const uint16_t*>(bytes);
    f.resize(t->nbytes / 2);
    for (size_t i = 0; i < f.size(); ++i) f[i] = fp16_to_fp32(h[i]);
    out->data = f.data();
    return true;
  };
  // The options are checked first, so whatever the constructor refuses after
  // them is about the file's tensors (missing, misshapen, of the wrong type).
  Engine::check_options(o);
  std::unique_ptr<Engine> engine;
  try {
    if (shard) {
      require(!mf.find("edgelut.shard.world_size") || mf.get_int("edgelut.shard.world_size") <= 1,
              path + ": is already a shard file (it holds its spec); open it without one");
      require(!paging, path + ": paging a slice of a whole model file is not supported; make shard files (edgelut shard)");
      auto keep = std::make_shared<std::vector<std::shared_ptr<void>>>();
      keep->push_back(store);
      engine = std::make_unique<Engine>(c, slicing_lookup(c, *shard, lookup, keep), o, *shard, std::move(comm), keep);
    } else {
      engine = std::make_unique<Engine>(c, lookup, o, file_shard, std::move(comm), store);
    }
  } catch (const ModelFileError&) {
    throw;
  } catch (const std::invalid_argument& e) {
    throw ModelFileError(path + ": " + e.what());
  }

  if (!paging) {
    // As it happened: MappedFile may have mapped the file instead.
    engine->set_weight_memory(mf.memory() == FileMemory::kRead ? "read" : "mmap",
                              [store] { return store->file->huge_bytes(); });
    return engine;
  }

  // The pager's layers: the model layers in file order, then (page_output)
  // the lm_head chunks.
  std::vector<std::vector<ByteRange>> pieces;
  std::vector<const uint8_t*> bases;
  const uint8_t* base = mapping_base(mf);
  uint64_t biggest = 0;
  for (const LayerRange& r : mf.layers()) {
    pieces.push_back({{r.offset, r.size}});
    bases.push_back(base + r.offset);
    biggest = std::max(biggest, r.size);
  }
  std::optional<PagedOutput> output;
  // A layer split's worker has neither embeddings nor an lm_head: nothing more to page.
  if (page_output && file_shard.layer_begin == 0)
    output = output_chunks(mf, biggest, file_shard.lm_head, &pieces);

  int window = p.window;
  if (window == 0) {
    std::vector<uint64_t> sizes;  // as the pager lays them out in a slot
    for (const auto& layer : pieces) {
      uint64_t end = 0;
      for (const ByteRange& r : layer) end = ((end + 63) & ~uint64_t{63}) + r.size;
      sizes.push_back(end);
    }
    window = Pager::window_for_budget(sizes, fixed_bytes_estimate(mf, c, o, engine->kv_bytes(), page_output),
                                      p.budget_bytes);
  }
  PagerOptions po;
  po.drop_cache = p.drop_cache;
  po.direct_io = p.direct_io;
  auto pager = std::make_shared<Pager>(path, std::move(pieces), window, po);
  engine->attach_pager(pager, std::move(bases), std::move(output));
  engine->set_weight_memory("paged", [store, pager] {
    uint64_t n = pager->huge_bytes();
    for (const auto& [name, mem] : store->pinned) n += mem.huge_bytes();
    return n;
  });
  return engine;
}

}  // namespace edgelut
