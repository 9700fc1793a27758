// What a device says about its shard in the tensor-parallel handshake, read
// from its model file, so that a worker of another model, layer count, weight
// format, split or engine geometry is refused before any eval.
//
// The model identity is a 64-bit FNV-1a over every tensor's name, type,
// shape and CRC32 of the whole model file, or the file's
// "edgelut.shard.model_id" when it is one device's shard file.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "../engine/model.h"
#include "../io/model_file.h"

namespace edgelut::net {

std::string model_identity(const ModelFile& mf);

// Fields: model, layers, format, prefill_chunk, n_ctx, ranks, rank, spec, max_values.
std::map<std::string, std::string> describe_shard(const ModelFile& mf, const Config& c, const ShardSpec& shard,
                                                  int rank, int ranks, const EngineOptions& o);

// The fields every worker must match, from the coordinator's own description.
inline const char* const kMatchedFields[] = {"model", "layers", "format", "prefill_chunk", "n_ctx"};

}  // namespace edgelut::net
