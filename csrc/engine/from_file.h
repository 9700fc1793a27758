// An Engine over a model file (csrc/io/model_file.h), with optional paging.
//
// A resident model is read once into memory advised for huge pages
// (huge_memory.h) and the weights are bound against it; with
// PagingOptions::mmap, where the kernel has no transparent huge pages, or for
// a file larger than the memory available, the file is memory-mapped instead
// (no copy, shared with the page cache).
// Unless paging is on: then a Pager with window W reads the layer
// weights into slots, only W layers are resident at a time, and the pinned
// tensors (token embeddings, final norm, lm_head) are copied out of the
// mapping at open, so that a file that shrinks or vanishes later can only
// make a pager read fail (a clear error), never a mapped access (SIGBUS).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "../io/model_file.h"
#include "model.h"

namespace edgelut {

struct PagingOptions {
  // 0: no pager, every layer through the mapping. 1..n_layers: the window.
  int window = 0;
  // When window is 0 and this is > 0, the window is the largest that fits
  // this budget next to the pinned tensors, the KV cache and scratch
  // (Pager::window_for_budget). A budget that fits every layer still pages
  // with W = n_layers, so the peak is bounded and reported.
  uint64_t budget_bytes = 0;
  bool drop_cache = false;
  bool direct_io = false;
  bool verify_crc = true;  // CRC32 of every tensor at open (reads the whole file once)
  // Map a resident model's file instead of reading it into huge pages: slower
  // decode, but its pages stay shared with the page cache (and other processes).
  bool mmap = false;
  // Page the token embeddings and the lm_head too, instead of pinning them:
  // the lm_head is read through the pager as chunks after the last layer,
  // and each token's embedding row is read from the file. Needs paging.
  bool page_output = false;
};

// The engine's Config from the file's hyper-parameters. Throws
// std::invalid_argument naming the file for unsupported settings.
Config config_from_file(const ModelFile& mf);

// Bytes the engine holds besides the layer weights: the pinned tensors, the
// KV cache and the activations (what window_for_budget calls fixed).
// With page_output, token_embd and output are not counted (they are paged).
uint64_t fixed_bytes_estimate(const ModelFile& mf, const Config& c, const EngineOptions& o, uint64_t kv_bytes,
                              bool page_output = false);

// The shard a file holds (edgelut.shard.*, written by `edgelut shard`), or the
// whole model (ShardSpec{}) for a plain model file. Throws ModelFileError for
// shard keys that do not describe one contiguous q-head range with the kv heads
// it needs and one FFN column range.
ShardSpec shard_from_file(const ModelFile& mf, const Config& c);

// A shard file (world size > 1, `edgelut shard`) holds its spec and needs
// `comm`, the communicator that joins it to the other shards. With `shard`,
// a whole model file is sliced to that shard at load (shard_slice.h; no
// paging) and sums through `comm`.
std::unique_ptr<Engine> engine_from_file(const std::string& path, const EngineOptions& o, const PagingOptions& p,
                                         const std::optional<ShardSpec>& shard = std::nullopt,
                                         std::shared_ptr<Communicator> comm = nullptr);

}  // namespace edgelut
