// The handshake description of handshake.h.
#include "handshake.h"

#include <cstdio>

#include "../engine/shard_slice.h"

namespace edgelut::net {

namespace {
void fnv(uint64_t& h, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
}
}  // namespace

std::string model_identity(const ModelFile& mf) {
  // A shard file (`edgelut shard`) names the whole model it was cut from.
  for (const char* key : {"edgelut.shard.model_id", "edgelut.shard.model_hash"})
    if (const GgufValue* id = mf.find(key); id && !id->s.empty()) return id->s;
  uint64_t h = 14695981039346656037ull;
  for (const FileTensor& t : mf.tensors()) {
    fnv(h, t.name.data(), t.name.size() + 1);
    fnv(h, t.qtype.data(), t.qtype.size() + 1);
    for (int64_t d : t.shape) fnv(h, &d, sizeof d);
    fnv(h, &t.crc32, sizeof t.crc32);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::map<std::string, std::string> describe_shard(const ModelFile& mf, const Config& c, const ShardSpec& shard,
                                                  int rank, int ranks, const EngineOptions& o) {
  std::string format = "?";
  // The first layer the file holds (a layer split's worker starts later than 0).
  const std::string down = "blk." + std::to_string(shard.resolved(c).layer_begin) + ".ffn_down.weight";
  if (const FileTensor* t = mf.tensor(down); t && t->packed)
    format = t->qtype + "g" + std::to_string(t->pshape.group) + (t->pshape.asym ? "a" : "s");
  return {
      {"model", model_identity(mf)},
      {"layers", std::to_string(c.n_layers)},
      {"format", format},
      {"prefill_chunk", std::to_string(o.prefill_chunk)},
      {"n_ctx", std::to_string(o.n_ctx)},
      {"ranks", std::to_string(ranks)},
      {"rank", std::to_string(rank)},
      {"spec", shard_text(shard.resolved(c))},
      {"max_values", std::to_string(o.prefill_chunk * c.dim)},
  };
}

}  // namespace edgelut::net
