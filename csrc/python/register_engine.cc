// Bindings for the engine and the sampler. Only type conversion lives here:
// keyword arguments become the C++ options structs, and the GIL is released
// around every forward pass (re-acquired only for a per-token Python callback;
// a TokenChannel hands tokens over without it).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <unordered_map>

#include "../engine/from_file.h"
#include "../engine/model.h"
#include "../engine/ops.h"
#include "../kernels/cpu_isa.h"
#include "../kernels/packed_matrix.h"
#include "token_channel.h"

namespace py = pybind11;

namespace edgelut::python {

py::dict pager_stats_dict(const PagerStats& s);  // register_pager.cc

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// The tensors an Engine was built from, kept alive as long as the engine.
struct TensorStore {
  std::unordered_map<std::string, PackedMatrix> packed;
  std::unordered_map<std::string, std::pair<std::vector<float>, std::vector<int64_t>>> floats;

  bool lookup(const std::string& name, WeightRef* out) const {
    if (auto it = packed.find(name); it != packed.end()) {
      out->packed = true;
      out->view = it->second.view();
      return true;
    }
    if (auto it = floats.find(name); it != floats.end()) {
      out->packed = false;
      out->data = it->second.first.data();
      out->shape = it->second.second;
      return true;
    }
    return false;
  }
};

std::shared_ptr<TensorStore> store_from_dict(const py::dict& tensors) {
  auto st = std::make_shared<TensorStore>();
  for (auto item : tensors) {
    const std::string name = py::str(item.first);
    if (py::isinstance<PackedMatrix>(item.second)) {
      st->packed.emplace(name, item.second.cast<PackedMatrix>());
    } else {
      F32 a = F32::ensure(item.second);
      if (!a) throw std::invalid_argument("tensor '" + name + "' is neither a PackedMatrix nor a float array");
      std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
      st->floats.emplace(name, std::make_pair(std::vector<float>(a.data(), a.data() + a.size()), shape));
    }
  }
  return st;
}

Engine* make_engine(const Config& c, const py::dict& tensors, int64_t n_ctx, int n_threads, const std::string& kv_type,
                    int64_t prefill_chunk, const std::string& isa, std::optional<ShardSpec> shard,
                    std::shared_ptr<Communicator> comm, bool swa_full_cache) {
  EngineOptions o;
  o.n_ctx = n_ctx;
  o.n_threads = n_threads;
  o.kv_type = kv_type_from_name(kv_type);
  o.prefill_chunk = prefill_chunk;
  o.isa = isa;
  o.swa_full_cache = swa_full_cache;
  auto st = store_from_dict(tensors);
  WeightLookup lookup = [st](const std::string& name, WeightRef* r) { return st->lookup(name, r); };
  py::gil_scoped_release release;
  return new Engine(c, lookup, o, shard.value_or(ShardSpec{}), std::move(comm), st);
}

std::unique_ptr<Engine> engine_from_path(const std::string& path, int64_t n_ctx, int n_threads,
                                         const std::string& kv_type, int64_t prefill_chunk, const std::string& isa,
                                         int window, uint64_t budget_bytes, bool drop_cache, bool direct_io,
                                         bool verify_crc, bool page_output, bool mmap,
                                         std::optional<ShardSpec> shard, std::shared_ptr<Communicator> comm) {
  EngineOptions o;
  o.n_ctx = n_ctx;
  o.n_threads = n_threads;
  o.kv_type = kv_type_from_name(kv_type);
  o.prefill_chunk = prefill_chunk;
  o.isa = isa;
  PagingOptions p;
  p.window = window;
  p.budget_bytes = budget_bytes;
  p.drop_cache = drop_cache;
  p.direct_io = direct_io;
  p.verify_crc = verify_crc;
  p.page_output = page_output;
  p.mmap = mmap;
  py::gil_scoped_release release;
  return engine_from_file(path, o, p, shard, std::move(comm));
}

py::array_t<float> eval(Engine& e, I32 ids, int64_t start_pos, bool all_logits, int64_t rope_end) {
  if (ids.ndim() != 1) throw std::invalid_argument("eval: ids must be a 1-D sequence of token ids");
  const int64_t n = ids.shape(0), V = e.config().vocab_size;
  py::array_t<float> out = all_logits ? py::array_t<float>({n, V}) : py::array_t<float>({V});
  float* p = out.mutable_data();
  const int32_t* ip = ids.data();
  py::gil_scoped_release release;
  e.eval(ip, n, start_pos, p, all_logits, rope_end);
  return out;
}

py::dict generate(Engine& e, I32 ids, int64_t max_tokens, std::vector<int32_t> eos, const SamplerParams& sampler,
                  std::vector<int32_t> history, const std::function<bool(int32_t)>& on_token,
                  std::shared_ptr<TokenChannel> channel) {
  if (static_cast<bool>(on_token) == static_cast<bool>(channel))
    throw std::invalid_argument("generate: give exactly one of on_token and channel");
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.eos = std::move(eos);
  o.sampler = sampler;
  o.history = std::move(history);
  GenerateResult r;
  {
    py::gil_scoped_release release;
    if (channel) {
      TokenChannel* ch = channel.get();
      r = e.generate(ids.data(), ids.shape(0), o, [ch](int32_t t) { return ch->push(t); });
    } else {
      // pybind11's std::function wrapper takes the GIL itself for each call.
      r = e.generate(ids.data(), ids.shape(0), o, on_token);
    }
  }
  py::dict d;
  d["tokens"] = r.tokens;
  d["stop_reason"] = r.stop_reason;
  d["n_prefill"] = r.n_prefill;
  d["n_decode"] = r.n_decode;
  d["prefill_s"] = r.prefill_s;
  d["decode_s"] = r.decode_s;
  return d;
}

// One query head's attention over cache rows the caller filled: k and v are
// (n, head_dim) float32 / uint16 (fp16 bits) / int8 by kv_type, scales
// (n, head_dim / block) float32 for q8. A test hook for the attention kernels.
F32 attention_head(F32 q, py::array k, py::array v, py::object k_scales, py::object v_scales,
                   const std::string& kv_type, float scale, const std::string& isa) {
  const KvType type = kv_type_from_name(kv_type);
  const char* want = type == KvType::kF32 ? "f" : type == KvType::kF16 ? "H" : "b";
  auto rows = [&](const py::array& a, const char* what) {
    if (a.ndim() != 2 || a.dtype().char_() != want[0] || !(a.flags() & py::array::c_style))
      throw std::invalid_argument(std::string("attention_head: ") + what + " must be a C-contiguous (n, head_dim) " +
                                  (type == KvType::kF32 ? "float32" : type == KvType::kF16 ? "uint16" : "int8") +
                                  " array");
    return a.data();
  };
  KvHeadRows kv;
  kv.k = rows(k, "k");
  kv.v = rows(v, "v");
  const int64_t n = k.shape(0), hd = k.shape(1);
  if (v.shape(0) != n || v.shape(1) != hd || q.ndim() != 1 || q.shape(0) != hd || n < 1)
    throw std::invalid_argument("attention_head: q (head_dim,), k and v (n, head_dim) with n >= 1");
  kv.stride = hd;
  F32 ks, vs;
  if (type == KvType::kQ8) {
    ks = k_scales.cast<F32>();
    vs = v_scales.cast<F32>();
    if (ks.ndim() != 2 || ks.shape(0) != n || hd % ks.shape(1) != 0 || vs.ndim() != 2 || vs.shape(0) != n ||
        vs.shape(1) != ks.shape(1))
      throw std::invalid_argument("attention_head: q8 scales must be (n, head_dim / block)");
    kv.k_scales = ks.data();
    kv.v_scales = vs.data();
    kv.block = hd / ks.shape(1);
  }
  F32 out(hd);
  std::vector<float> att(static_cast<size_t>(n));
  attn_head(isa.empty() ? cpu_isa() : isa_from_name(isa), type)(q.data(), kv, n, hd, scale, att.data(),
                                                                 out.mutable_data());
  return out;
}

// The gated FFN activation of an ISA on (gate, up): a test hook.
F32 gated_activation(F32 gate, F32 up, const std::string& kind, const std::string& isa) {
  if (kind != "silu" && kind != "gelu_tanh")
    throw std::invalid_argument("gated_activation: kind must be 'silu' or 'gelu_tanh', got '" + kind + "'");
  if (gate.ndim() != 1 || up.ndim() != 1 || gate.shape(0) != up.shape(0))
    throw std::invalid_argument("gated_activation: gate and up must be 1-D of one length");
  F32 out(gate.shape(0));
  std::copy(gate.data(), gate.data() + gate.shape(0), out.mutable_data());
  gated_act(isa.empty() ? cpu_isa() : isa_from_name(isa), kind == "gelu_tanh")(out.mutable_data(), up.data(),
                                                                                  gate.shape(0));
  return out;
}

}  // namespace

void register_engine(py::module_& m) {
  py::class_<Config>(m, "EngineConfig")
      .def(py::init<>())
      .def_readwrite("architecture", &Config::architecture)
      .def_readwrite("dim", &Config::dim)
      .def_readwrite("hidden_dim", &Config::hidden_dim)
      .def_readwrite("n_layers", &Config::n_layers)
      .def_readwrite("n_heads", &Config::n_heads)
      .def_readwrite("n_kv_heads", &Config::n_kv_heads)
      .def_readwrite("head_dim", &Config::head_dim)
      .def_readwrite("vocab_size", &Config::vocab_size)
      .def_readwrite("norm_eps", &Config::norm_eps)
      .def_readwrite("rope_theta", &Config::rope_theta)
      .def_readwrite("rope_neox", &Config::rope_neox)
      .def_readwrite("rope_dim", &Config::rope_dim)
      .def_readwrite("rope_mscale", &Config::rope_mscale)
      .def_readwrite("rope_linear_factor", &Config::rope_linear_factor)
      .def_readwrite("rope_freq_factors", &Config::rope_freq_factors)
      .def_readwrite("rope_long_factors", &Config::rope_long_factors)
      .def_readwrite("rope_original_ctx", &Config::rope_original_ctx)
      .def_readwrite("attn_bias", &Config::attn_bias)
      .def_readwrite("tie_embeddings", &Config::tie_embeddings)
      .def_readwrite("qk_norm", &Config::qk_norm)
      .def_readwrite("post_norms", &Config::post_norms)
      .def_readwrite("ffn_gelu", &Config::ffn_gelu)
      .def_readwrite("ffn_relu2", &Config::ffn_relu2)
      .def_readwrite("sub_norms", &Config::sub_norms)
      .def_readwrite("act_int8", &Config::act_int8)
      .def_readwrite("embed_scale", &Config::embed_scale)
      .def_readwrite("ffn_hadamard", &Config::ffn_hadamard)
      .def_readwrite("attn_scale", &Config::attn_scale)
      .def_readwrite("sliding_window", &Config::sliding_window)
      .def_readwrite("sliding_window_pattern", &Config::sliding_window_pattern)
      .def_readwrite("rope_local_theta", &Config::rope_local_theta)
      .def("validate", &Config::validate);

  py::class_<ShardSpec>(m, "ShardSpec")
      .def(py::init([](int64_t qb, int64_t qe, int64_t fb, int64_t fe, bool lm_head, int64_t eb, int64_t ee,
                       int64_t lb, int64_t le) {
             ShardSpec s;
             s.layer_begin = lb;
             s.layer_end = le;
             s.embd_begin = eb;
             s.embd_end = ee;
             s.q_head_begin = qb;
             s.q_head_end = qe;
             s.ffn_begin = fb;
             s.ffn_end = fe;
             s.lm_head = lm_head;
             return s;
           }),
           py::arg("q_head_begin") = 0, py::arg("q_head_end") = -1, py::arg("ffn_begin") = 0,
           py::arg("ffn_end") = -1, py::arg("lm_head") = true, py::arg("embd_begin") = 0, py::arg("embd_end") = -1,
           py::arg("layer_begin") = 0, py::arg("layer_end") = -1)
      .def_readonly("q_head_begin", &ShardSpec::q_head_begin)
      .def_readonly("q_head_end", &ShardSpec::q_head_end)
      .def_readonly("ffn_begin", &ShardSpec::ffn_begin)
      .def_readonly("ffn_end", &ShardSpec::ffn_end)
      .def_readonly("lm_head", &ShardSpec::lm_head)
      .def_readonly("embd_begin", &ShardSpec::embd_begin)
      .def_readonly("embd_end", &ShardSpec::embd_end)
      .def_readonly("layer_begin", &ShardSpec::layer_begin)
      .def_readonly("layer_end", &ShardSpec::layer_end)
      .def_readonly("kv_head_begin", &ShardSpec::kv_head_begin)
      .def_readonly("kv_head_end", &ShardSpec::kv_head_end)
      .def("resolved", &ShardSpec::resolved, py::arg("config"),
           "The ranges with -1 ends filled in and the kv heads the q heads read; checks them.")
      .def("__repr__", [](const ShardSpec& s) {
        return "ShardSpec(q_heads=[" + std::to_string(s.q_head_begin) + ", " + std::to_string(s.q_head_end) +
               "), ffn=[" + std::to_string(s.ffn_begin) + ", " + std::to_string(s.ffn_end) +
               "), layers=[" + std::to_string(s.layer_begin) + ", " + std::to_string(s.layer_end) +
               "), lm_head=" + (s.lm_head ? "True" : "False") + ")";
      });

  py::class_<SamplerParams>(m, "SamplerParams")
      .def(py::init<>())
      .def_readwrite("temperature", &SamplerParams::temperature)
      .def_readwrite("top_k", &SamplerParams::top_k)
      .def_readwrite("top_p", &SamplerParams::top_p)
      .def_readwrite("min_p", &SamplerParams::min_p)
      .def_readwrite("repeat_penalty", &SamplerParams::repeat_penalty)
      .def_readwrite("repeat_last_n", &SamplerParams::repeat_last_n)
      .def_readwrite("presence_penalty", &SamplerParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplerParams::frequency_penalty)
      .def_readwrite("seed", &SamplerParams::seed)
      .def("validate", &SamplerParams::validate);

  py::class_<Sampler>(m, "Sampler")
      .def(py::init<const SamplerParams&>(), py::arg("params"))
      .def(
          "sample",
          [](Sampler& s, F32 logits, I32 recent) {
            if (logits.ndim() != 1) throw std::invalid_argument("sample: logits must be 1-D (vocab,)");
            return s.sample(logits.data(), logits.shape(0), recent.data(), recent.size());
          },
          py::arg("logits"), py::arg("recent"));

  m.def("attention_head", &attention_head, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("k_scales") = py::none(),
        py::arg("v_scales") = py::none(), py::kw_only(), py::arg("kv_type"), py::arg("scale"), py::arg("isa") = "");
  m.def("gated_activation", &gated_activation, py::arg("gate"), py::arg("up"), py::kw_only(), py::arg("kind"),
        py::arg("isa") = "");

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator");
  m.def("make_local_group", &make_local_group, py::arg("n_ranks"),
        "Communicators for n shards running on n threads of this process.");

  py::class_<TokenChannel, std::shared_ptr<TokenChannel>>(
      m, "TokenChannel", "Sampled tokens from a generation on one thread to a consumer on another, without the GIL.")
      .def(py::init<>())
      .def("fileno", &TokenChannel::fileno, "A pipe that is readable once tokens (or the end) are pending.")
      .def("push", &TokenChannel::push, py::arg("token"),
           "Hand over one token (a Python decode loop's producer side); False once cancelled.")
      .def("finish", &TokenChannel::finish, "No more tokens will come.")
      .def(
          "drain",
          [](TokenChannel& c) {
            bool finished = false;
            std::vector<int32_t> t = c.drain(&finished);
            return py::make_tuple(t, finished);
          },
          "(tokens pushed since the last drain, whether the producer finished).")
      .def("cancel", &TokenChannel::cancel, "Ask the producer to stop after its current token.")
      .def_property_readonly("cancelled", &TokenChannel::cancelled);

  py::class_<Engine>(m, "Engine")
      .def(py::init(&make_engine), py::arg("config"), py::arg("tensors"), py::kw_only(), py::arg("n_ctx") = 2048,
           py::arg("n_threads") = 0, py::arg("kv_type") = "f16", py::arg("prefill_chunk") = 64, py::arg("isa") = "",
           py::arg("shard") = py::none(), py::arg("communicator") = nullptr, py::arg("swa_full_cache") = false)
      .def_static("from_file", &engine_from_path, py::arg("path"), py::kw_only(), py::arg("n_ctx") = 2048,
                  py::arg("n_threads") = 0, py::arg("kv_type") = "f16", py::arg("prefill_chunk") = 64,
                  py::arg("isa") = "", py::arg("window") = 0, py::arg("budget_bytes") = 0,
                  py::arg("drop_cache") = false, py::arg("direct_io") = false, py::arg("verify_crc") = true,
                  py::arg("page_output") = false, py::arg("mmap") = false, py::arg("shard") = py::none(),
                  py::arg("communicator") = nullptr,
                  "An engine over a model file; window > 0 (or budget_bytes) pages the layers. Resident weights "
                  "are read into huge-page memory where the kernel has it, unless mmap maps the file. A shard "
                  "file (edgelut shard) holds its spec and needs the communicator joining it to its other "
                  "shards; shard slices a whole model file at load.")
      .def_property_readonly("weight_memory", &Engine::weight_memory,
                             "How a model file's weights are held: 'read' (into huge-page memory), 'mmap', "
                             "'paged', or '' for tensors given in memory.")
      .def_property_readonly("huge_page_bytes", &Engine::huge_page_bytes,
                             "Bytes of the weights the kernel backs with huge pages now.")
      .def_property_readonly("shard", &Engine::shard)
      .def_property_readonly("window",
                             [](const Engine& e) { return e.pager() ? e.pager()->window() : 0; })
      .def("pager_stats",
           [](const Engine& e) -> py::object {
             if (!e.pager()) return py::none();
             return pager_stats_dict(e.pager()->stats());
           })
      .def("reset_pager_stats",
           [](const Engine& e) {
             if (e.pager()) e.pager()->reset_stats();
           })
      .def("eval", &eval, py::arg("ids"), py::arg("start_pos"), py::arg("all_logits") = false,
           py::arg("rope_end") = 0,
           "Logits of ids at start_pos..; rope_end: the length of the sequence this call is a block "
           "of, for LongRoPE's choice of factors (0: this call's end).")
      .def("truncate", &Engine::truncate, py::arg("n"))
      .def("reusable_prefix", &Engine::reusable_prefix, py::arg("n"), py::arg("total"),
           "How many of the first n cached positions a call reaching `total` positions may keep "
           "(LongRoPE: keys rotated with the other factors are not reusable); n without LongRoPE.")
      .def("reset", &Engine::reset)
      .def(
          "kv_snapshot",
          [](const Engine& e) {
            const std::vector<uint8_t> b = e.kv_snapshot();
            return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
          },
          "The KV cache of positions [0, n_past) as bytes (a prompt-cache slot).")
      .def(
          "kv_restore",
          [](Engine& e, const py::bytes& data, int64_t n_past) {
            const std::string_view b = data;
            e.kv_restore(reinterpret_cast<const uint8_t*>(b.data()), b.size(), n_past);
          },
          py::arg("data"), py::arg("n_past"), "Put back a kv_snapshot taken at n_past positions.")
      .def("generate", &generate, py::arg("ids"), py::kw_only(), py::arg("max_tokens"), py::arg("eos"),
           py::arg("sampler"), py::arg("history"), py::arg("on_token") = nullptr,
           py::arg("channel") = nullptr)
      .def_property_readonly("n_past", &Engine::n_past)
      .def_property_readonly("n_ctx", &Engine::n_ctx)
      .def_property_readonly("n_threads", &Engine::n_threads)
      .def_property_readonly("prefill_chunk", &Engine::prefill_chunk)
      .def_property_readonly("kv_bytes", &Engine::kv_bytes)
      .def("set_profiling", &Engine::set_profiling, py::arg("on"))
      .def("reset_profile", &Engine::reset_profile)
      .def_property("matmul_path", &Engine::matmul_path, &Engine::set_matmul_path)
      .def("profile", [](const Engine& e) {
        const Profile& p = e.profile();
        py::dict d;
        d["matmul_attn"] = p.matmul_attn;
        d["matmul_ffn"] = p.matmul_ffn;
        d["lm_head"] = p.lm_head;
        d["attention"] = p.attention;
        d["other"] = p.other;
        d["tables"] = p.tables;
        d["elementwise"] = p.elementwise;
        d["tokens"] = p.tokens;
        d["calls"] = p.calls;
        return d;
      });
}

}  // namespace edgelut::python
