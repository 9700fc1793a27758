// One shard's slice of a whole model's weights, cut at load: the rows of
// q/k/v/gate/up and the columns of attn_output/ffn_down that the shard
// holds. Row slices point into the whole tensor (packed row tiles are
// contiguous); column slices are copied group by group. Per-device shard
// files (`edgelut shard`) make this unnecessary; this is what lets a device
// serve from the one whole file with --rank/--ranks.
#pragma once
#include <memory>
#include <vector>

#include "model.h"

namespace edgelut {

// The even split of rank `rank` of `ranks`: q heads in equal runs (with the kv
// heads they read) and FFN columns in equal runs of 64-row tiles. Throws
// std::invalid_argument when ranks exceeds the q heads. (`edgelut shard`
// splits unevenly, by --weights, into per-device files.)
ShardSpec even_shard(const Config& c, int rank, int ranks);

// "q=B:E,kv=B:E,ffn=B:E,embd=B:E,layers=B:E[,lm_head]" of a resolved spec, as the tensor-parallel
// handshake compares it.
std::string shard_text(const ShardSpec& s);

// A lookup that hands out the shard's slices of `whole`; the copies live in `keep`.
// Throws std::invalid_argument when a boundary is not on a 64-row tile or a group.
WeightLookup slicing_lookup(const Config& c, const ShardSpec& shard, WeightLookup whole,
                            std::shared_ptr<std::vector<std::shared_ptr<void>>> keep);

}  // namespace edgelut
