// Slicing a whole model's weights to one shard at load (shard_slice.h).
#include "shard_slice.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace edgelut {

namespace {
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// Rows [r0, r1) of a packed matrix: whole row tiles, no copy.
PackedView row_slice(const PackedView& v, int64_t r0, int64_t r1, const std::string& name) {
  require(r0 % kTileRows == 0, name + ": a shard starting at row " + std::to_string(r0) +
                                   " is not on a 64-row tile (use edgelut shard for this split)");
  PackedView out = v;
  const int64_t t0 = r0 / kTileRows, g = v.shape.groups();
  out.shape.n = r1 - r0;
  out.codes = v.codes + static_cast<size_t>(t0 * g) * v.shape.group_code_bytes();
  out.scales = v.scales + static_cast<size_t>(t0 * g) * kTileRows;
  if (v.mins) out.mins = v.mins + static_cast<size_t>(t0 * g) * kTileRows;
  return out;
}

// Columns [c0, c1) of a packed matrix: whole groups, copied.
PackedView col_slice(const PackedView& v, int64_t c0, int64_t c1, const std::string& name,
                     std::vector<std::shared_ptr<void>>& keep) {
  const int64_t G = v.shape.group;
  require(c0 % G == 0 && (c1 % G == 0 || c1 == v.shape.k),
          name + ": shard columns " + std::to_string(c0) + ".." + std::to_string(c1) + " are not on " +
              std::to_string(G) + "-column groups");
  PackedShape s = v.shape;
  s.k = c1 - c0;
  void* mem = std::aligned_alloc(kSectionAlign, align_up(s.total_bytes(), kSectionAlign));
  if (!mem) throw std::bad_alloc();
  keep.emplace_back(mem, std::free);
  auto* base = static_cast<uint8_t*>(mem);
  std::memset(base, 0, s.total_bytes());
  PackedView out = PackedView::over(s, base);
  const int64_t T = v.shape.tiles(), NG = v.shape.groups(), ng = s.groups(), g0 = c0 / G;
  const size_t gcb = v.shape.group_code_bytes();
  auto* codes = const_cast<uint8_t*>(out.codes);
  auto* scales = const_cast<uint16_t*>(out.scales);
  auto* mins = const_cast<uint16_t*>(out.mins);
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(codes + (t * ng) * gcb, v.codes + (t * NG + g0) * gcb, ng * gcb);
    std::memcpy(scales + (t * ng) * kTileRows, v.scales + (t * NG + g0) * kTileRows, ng * kTileRows * 2);
    if (mins) std::memcpy(mins + (t * ng) * kTileRows, v.mins + (t * NG + g0) * kTileRows, ng * kTileRows * 2);
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
}  // namespace

ShardSpec even_shard(const Config& c, int rank, int ranks) {
  require(ranks >= 1 && rank >= 0 && rank < ranks,
          "rank " + std::to_string(rank) + " is outside 0.." + std::to_string(ranks - 1));
  require(ranks <= c.n_heads, "an even split of " + std::to_string(c.n_heads) + " q heads over " +
                                  std::to_string(ranks) + " devices is impossible");
  // q heads in equal runs (a GQA group may straddle two ranks: both hold its kv head).
  const int64_t tiles = (c.hidden_dim + kTileRows - 1) / kTileRows;
  ShardSpec s;
  s.q_head_begin = rank * c.n_heads / ranks;
  s.q_head_end = (rank + 1) * c.n_heads / ranks;
  s.ffn_begin = rank * tiles / ranks * kTileRows;
  s.ffn_end = std::min<int64_t>(c.hidden_dim, (rank + 1) * tiles / ranks * kTileRows);
  return s;
}

std::string shard_text(const ShardSpec& s) {
  return "q=" + std::to_string(s.q_head_begin) + ":" + std::to_string(s.q_head_end) +
         ",kv=" + std::to_string(s.kv_head_begin) + ":" + std::to_string(s.kv_head_end) +
         ",ffn=" + std::to_string(s.ffn_begin) + ":" + std::to_string(s.ffn_end) +
         ",embd=" + std::to_string(s.embd_begin) + ":" + std::to_string(s.embd_end) +
         ",layers=" + std::to_string(s.layer_begin) + ":" + std::to_string(s.layer_end) +
         (s.lm_head ? ",lm_head" : "");
}

WeightLookup slicing_lookup(const Config& c, const ShardSpec& shard_in, WeightLookup whole,
                            std::shared_ptr<std::vector<std::shared_ptr<void>>> keep) {
  const ShardSpec s = shard_in.resolved(c);
  const int64_t hd = c.head_dim;
  const int64_t q0 = s.q_head_begin * hd, q1 = s.q_head_end * hd;
  const int64_t k0 = s.kv_head_begin * hd, k1 = s.kv_head_end * hd;
  return [=](const std::string& name, WeightRef* out) {
    if (!whole(name, out)) return false;
    if (name.rfind("blk.", 0) != 0) return true;
    int64_t r0 = -1, r1 = -1, c0 = -1, c1 = -1;
    if (ends_with(name, ".attn_q.weight") || ends_with(name, ".attn_q.bias")) r0 = q0, r1 = q1;
    if (ends_with(name, ".attn_k.weight") || ends_with(name, ".attn_k.bias") || ends_with(name, ".attn_v.weight") ||
        ends_with(name, ".attn_v.bias"))
      r0 = k0, r1 = k1;
    if (ends_with(name, ".ffn_gate.weight") || ends_with(name, ".ffn_up.weight")) r0 = s.ffn_begin, r1 = s.ffn_end;
    if (ends_with(name, ".attn_output.weight")) c0 = q0, c1 = q1;
    if (ends_with(name, ".ffn_down.weight")) c0 = s.ffn_begin, c1 = s.ffn_end;
    if (r0 >= 0) {
      if (out->packed) {
        out->view = row_slice(out->view, r0, r1, name);
      } else {
        const int64_t cols = out->shape.size() == 2 ? out->shape[1] : 1;
        out->data += r0 * cols;
        out->shape[0] = r1 - r0;
      }
    }
    if (c0 >= 0) {
      require(out->packed, name + ": slicing the columns of a float tensor is not supported");
      out->view = col_slice(out->view, c0, c1, name, *keep);
    }
    return true;
  };
}

}  // namespace edgelut
