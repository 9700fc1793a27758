// The C ABI (csrc/include/edgelut.h) over the C++ engine. Thin: argument
// checks, then the engine, sampler and model-file reader do the work. Every
// entry point runs its body through guarded(), which turns any exception into
// a status plus a one-line thread-local message.
#include "../include/edgelut.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../engine/from_file.h"
#include "../engine/model.h"
#include "../engine/shard_slice.h"
#include "../engine/sampler.h"
#include "../io/model_file.h"
#include "../net/handshake.h"
#include "../net/worker.h"
#include "tokenizer_backend.h"

struct edgelut_model {
  std::unique_ptr<edgelut::Engine> engine;
  std::unique_ptr<edgelut::Tokenizer> tokenizer;
  std::string tokenizer_error;      // why there is no tokenizer
  std::vector<int32_t> eos;         // end-of-sequence ids
  std::vector<int32_t> cache_ids;   // what the KV cache holds (prefix reuse)
};

struct edgelut_sampler {
  edgelut::Sampler sampler;
};

namespace {

using edgelut::Engine;

thread_local std::string g_error;

// An error with its status, for the checks made in this file.
struct StatusError : std::runtime_error {
  StatusError(edgelut_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
  edgelut_status status;
};

[[noreturn]] void fail(edgelut_status s, const std::string& msg) { throw StatusError(s, msg); }

void require_arg(bool ok, const std::string& msg) {
  if (!ok) fail(EDGELUT_ERR_INVALID_ARGUMENT, msg);
}

template <typename T>
void require_ptr(const T* p, const char* what) {
  if (!p) fail(EDGELUT_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

edgelut_status set_error(edgelut_status s, std::string msg) {
  for (char& ch : msg)
    if (ch == '\n' || ch == '\r') ch = ' ';
  g_error = std::move(msg);
  return s;
}

// Runs body and maps what it throws. `invalid` is the status of
// std::invalid_argument here (bad input: a bad argument, or a bad file while loading).
edgelut_status guarded(edgelut_status invalid, const std::function<void()>& body) {
  g_error.clear();
  try {
    body();
    return EDGELUT_OK;
  } catch (const StatusError& e) {
    return set_error(e.status, e.what());
  } catch (const edgelut::TokenizerUnavailable& e) {
    return set_error(EDGELUT_ERR_NO_TOKENIZER, e.what());
  } catch (const edgelut::TokenizerError& e) {
    return set_error(EDGELUT_ERR_TOKENIZER, e.what());
  } catch (const edgelut::ModelFileError& e) {
    return set_error(EDGELUT_ERR_INVALID_MODEL, e.what());
  } catch (const edgelut::FileAccessError& e) {
    return set_error(EDGELUT_ERR_IO, e.what());
  } catch (const edgelut::net::PeerError& e) {
    return set_error(EDGELUT_ERR_NETWORK, e.what());
  } catch (const std::invalid_argument& e) {
    return set_error(invalid, e.what());
  } catch (const std::bad_alloc&) {
    return set_error(EDGELUT_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::runtime_error& e) {
    return set_error(EDGELUT_ERR_IO, e.what());
  } catch (const std::exception& e) {
    return set_error(EDGELUT_ERR_INTERNAL, e.what());
  } catch (...) {
    return set_error(EDGELUT_ERR_INTERNAL, "unknown C++ exception");
  }
}

edgelut::Tokenizer& need_tokenizer(edgelut_model* m) {
  if (!m->tokenizer) fail(EDGELUT_ERR_NO_TOKENIZER, m->tokenizer_error);
  return *m->tokenizer;
}

// Copies n items to a caller buffer of `capacity`; *needed gets n.
template <typename T>
void copy_out(const T* src, size_t n, T* dst, size_t capacity, size_t* needed, const char* what) {
  require_ptr(needed, what);
  *needed = n;
  if (n > capacity) fail(EDGELUT_ERR_BUFFER_TOO_SMALL, std::string(what) + ": the buffer holds " +
                                                           std::to_string(capacity) + ", " + std::to_string(n) +
                                                           " needed");
  if (n) {
    require_ptr(dst, "the output buffer");
    std::memcpy(dst, src, n * sizeof(T));
  }
}

// A string with its NUL: *length excludes it, capacity must include it.
void copy_text(const std::string& s, char* dst, size_t capacity, size_t* length) {
  require_ptr(length, "length");
  *length = s.size();
  if (s.size() + 1 > capacity)
    fail(EDGELUT_ERR_BUFFER_TOO_SMALL, "the text needs " + std::to_string(s.size() + 1) + " bytes, the buffer holds " +
                                           std::to_string(capacity));
  require_ptr(dst, "text");
  std::memcpy(dst, s.data(), s.size());
  dst[s.size()] = '\0';
}

edgelut::SamplerParams sampler_params(const edgelut_sampling_params& p) {
  require_arg(p.struct_size >= sizeof(edgelut_sampling_params),
              "edgelut_sampling_params: struct_size is not set (call edgelut_sampling_params_init)");
  edgelut::SamplerParams s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.repeat_penalty = p.repeat_penalty;
  s.repeat_last_n = p.repeat_last_n;
  s.seed = p.seed;
  s.validate();
  return s;
}

std::vector<std::pair<std::string, std::string>> messages_of(const edgelut_chat_message* messages, size_t n) {
  require_arg(n > 0, "the conversation has no messages");
  require_ptr(messages, "messages");
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < n; ++i) {
    require_arg(messages[i].role && messages[i].content,
                "message " + std::to_string(i) + " has a NULL role or content");
    out.emplace_back(messages[i].role, messages[i].content);
  }
  return out;
}

std::string render_chat(edgelut_model* m, const edgelut_chat_message* messages, size_t n, bool add_generation_prompt) {
  edgelut::Tokenizer& tok = need_tokenizer(m);
  const auto msgs = messages_of(messages, n);
  if (!tok.has_chat_template()) fail(EDGELUT_ERR_NO_TOKENIZER, "this model has no chat template");
  return tok.apply_chat_template(msgs, add_generation_prompt);
}

// The one generation path: reuse the cached prefix, run the engine's loop,
// hand each token and its text to the callback.
void generate(edgelut_model* m, const std::vector<int32_t>& ids, const edgelut_generate_params* gp,
              edgelut_generate_result* result) {
  edgelut_generate_params defaults;
  edgelut_generate_params_init(&defaults);
  const edgelut_generate_params& p = gp ? *gp : defaults;
  require_arg(p.struct_size >= sizeof(edgelut_generate_params),
              "edgelut_generate_params: struct_size is not set (call edgelut_generate_params_init)");
  require_arg(!ids.empty(), "the prompt is empty");
  require_arg(p.max_tokens >= 1, "max_tokens must be >= 1, got " + std::to_string(p.max_tokens));
  Engine& e = *m->engine;
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n >= e.n_ctx())
    fail(EDGELUT_ERR_CONTEXT_FULL, "the prompt has " + std::to_string(n) + " tokens but the context holds " +
                                       std::to_string(e.n_ctx()) + " (n_ctx); shorten it or load with a larger n_ctx");

  edgelut::GenerateOptions o;
  o.max_tokens = p.max_tokens;
  o.eos = m->eos;
  o.sampler = sampler_params(p.sampling);

  // Longest common prefix with the KV cache; the last prompt token is always
  // evaluated again because its logits pick the first token.
  int64_t cached = 0;
  const int64_t limit = std::min<int64_t>({n - 1, static_cast<int64_t>(m->cache_ids.size()), e.n_past()});
  while (cached < limit && m->cache_ids[cached] == ids[cached]) ++cached;
  e.truncate(e.reusable_prefix(cached, n));
  cached = e.n_past();  // a sliding-window ring that lost the window before `cached` keeps nothing
  m->cache_ids.resize(cached);
  o.history.assign(ids.begin(), ids.begin() + cached);

  std::unique_ptr<edgelut::TokenStream> stream = m->tokenizer ? m->tokenizer->stream() : nullptr;
  std::vector<int32_t> sampled;
  auto on_token = [&](int32_t tok) {
    sampled.push_back(tok);
    std::string piece;
    if (stream && std::find(o.eos.begin(), o.eos.end(), tok) == o.eos.end()) piece = stream->push(tok);
    return !p.on_token || p.on_token(tok, piece.c_str(), piece.size(), p.user_data) == 0;
  };
  edgelut::GenerateResult r;
  try {
    r = e.generate(ids.data() + cached, n - cached, o, on_token);
  } catch (...) {
    // The KV cache holds the prompt and every sampled token but the last.
    m->cache_ids = ids;
    m->cache_ids.insert(m->cache_ids.end(), sampled.begin(), sampled.end());
    m->cache_ids.resize(std::min<size_t>(m->cache_ids.size(), static_cast<size_t>(e.n_past())));
    throw;
  }
  m->cache_ids = ids;
  m->cache_ids.insert(m->cache_ids.end(), sampled.begin(), sampled.end());
  m->cache_ids.resize(std::min<size_t>(m->cache_ids.size(), static_cast<size_t>(e.n_past())));
  if (result) {
    result->n_prompt = static_cast<int32_t>(n);
    result->n_cached = static_cast<int32_t>(cached);
    result->n_generated = static_cast<int32_t>(r.tokens.size());
    result->stop_reason = r.stop_reason == "eos"       ? EDGELUT_STOP_EOS
                          : r.stop_reason == "context"  ? EDGELUT_STOP_CONTEXT
                          : r.stop_reason == "callback" ? EDGELUT_STOP_CALLBACK
                                                        : EDGELUT_STOP_LENGTH;
    result->prefill_seconds = r.prefill_s;
    result->decode_seconds = r.decode_s;
  }
}

}  // namespace

extern "C" {

const char* edgelut_version(void) { return "0.1.0"; }
int edgelut_abi_version(void) { return EDGELUT_ABI_VERSION; }
const char* edgelut_last_error(void) { return g_error.c_str(); }

const char* edgelut_status_name(edgelut_status status) {
  switch (status) {
    case EDGELUT_OK: return "EDGELUT_OK";
    case EDGELUT_ERR_INVALID_ARGUMENT: return "EDGELUT_ERR_INVALID_ARGUMENT";
    case EDGELUT_ERR_IO: return "EDGELUT_ERR_IO";
    case EDGELUT_ERR_INVALID_MODEL: return "EDGELUT_ERR_INVALID_MODEL";
    case EDGELUT_ERR_CONTEXT_FULL: return "EDGELUT_ERR_CONTEXT_FULL";
    case EDGELUT_ERR_NO_TOKENIZER: return "EDGELUT_ERR_NO_TOKENIZER";
    case EDGELUT_ERR_TOKENIZER: return "EDGELUT_ERR_TOKENIZER";
    case EDGELUT_ERR_BUFFER_TOO_SMALL: return "EDGELUT_ERR_BUFFER_TOO_SMALL";
    case EDGELUT_ERR_OUT_OF_MEMORY: return "EDGELUT_ERR_OUT_OF_MEMORY";
    case EDGELUT_ERR_INTERNAL: return "EDGELUT_ERR_INTERNAL";
    case EDGELUT_ERR_NETWORK: return "EDGELUT_ERR_NETWORK";
  }
  return "EDGELUT_ERR_UNKNOWN";
}

void edgelut_load_params_init(edgelut_load_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->n_ctx = 2048;
  p->kv_type = "f16";
  p->verify_crc = 1;
}

edgelut_status edgelut_model_load(const char* path, const edgelut_load_params* params, edgelut_model** out) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(out, "out");
    *out = nullptr;
    require_ptr(path, "path");
    edgelut_load_params defaults;
    edgelut_load_params_init(&defaults);
    const edgelut_load_params& p = params ? *params : defaults;
    // A caller built against the header before use_mmap passes the shorter struct.
    require_arg(p.struct_size >= offsetof(edgelut_load_params, use_mmap),
                "edgelut_load_params: struct_size is not set (call edgelut_load_params_init)");
    require_arg(p.n_ctx >= 1, "n_ctx must be >= 1, got " + std::to_string(p.n_ctx));
    require_arg(p.n_threads >= 0, "n_threads must be >= 0, got " + std::to_string(p.n_threads));
    require_arg(p.window >= 0, "window must be >= 0, got " + std::to_string(p.window));
    edgelut::EngineOptions eo;
    eo.n_ctx = p.n_ctx;
    eo.n_threads = p.n_threads;
    try {
      eo.kv_type = edgelut::kv_type_from_name(p.kv_type ? p.kv_type : "f16");
    } catch (const std::invalid_argument& e) {
      fail(EDGELUT_ERR_INVALID_ARGUMENT, e.what());
    }
    edgelut::PagingOptions po;
    po.window = p.window;
    po.budget_bytes = p.memory_budget;
    po.drop_cache = p.drop_cache != 0;
    po.direct_io = p.direct_io != 0;
    po.verify_crc = p.verify_crc != 0;
    po.mmap = p.struct_size >= offsetof(edgelut_load_params, use_mmap) + sizeof p.use_mmap && p.use_mmap != 0;

    auto m = std::make_unique<edgelut_model>();
    // The file's content problems are edgelut::ModelFileError (EDGELUT_ERR_INVALID_MODEL),
    // a path that cannot be read edgelut::FileAccessError (EDGELUT_ERR_IO); guarded()
    // maps the other std::invalid_argument (a window or budget that cannot work) to
    // EDGELUT_ERR_INVALID_ARGUMENT.
    m->engine = edgelut::engine_from_file(path, eo, po);
    // A second, unchecked mapping for the metadata (the engine keeps its own).
    edgelut::ModelFile mf(path, false);
    const edgelut::GgufValue* eos_list = mf.find("edgelut.eos_token_ids");
    if (eos_list && eos_list->type == edgelut::GgufType::Array)
      for (int64_t id : eos_list->ints) m->eos.push_back(static_cast<int32_t>(id));
    if (const edgelut::GgufValue* eos = mf.find("tokenizer.ggml.eos_token_id"))
      m->eos.push_back(static_cast<int32_t>(eos->i));
    const bool want_tokenizer = !(p.tokenizer_lib && !*p.tokenizer_lib);
    if (!want_tokenizer) {
      m->tokenizer_error = "no tokenizer backend: the model was loaded with tokenizer_lib = \"\"";
    } else {
      try {
        m->tokenizer = edgelut::Tokenizer::create(p.tokenizer_lib ? p.tokenizer_lib : "", mf);
      } catch (const edgelut::TokenizerUnavailable& e) {
        m->tokenizer_error = e.what();
      } catch (const std::runtime_error& e) {
        m->tokenizer_error = e.what();
      }
    }
    if (m->tokenizer) {
      const edgelut::GgufValue* eos_text = mf.find("edgelut.tokenizer.eos_token");
      if (eos_text && !eos_text->s.empty())
        if (const int32_t id = m->tokenizer->token_id(eos_text->s); id >= 0) m->eos.push_back(id);
    }
    std::sort(m->eos.begin(), m->eos.end());
    m->eos.erase(std::unique(m->eos.begin(), m->eos.end()), m->eos.end());
    *out = m.release();
  });
}

void edgelut_model_free(edgelut_model* model) { delete model; }

int32_t edgelut_model_n_vocab(const edgelut_model* m) {
  return m ? static_cast<int32_t>(m->engine->config().vocab_size) : 0;
}
int32_t edgelut_model_n_ctx(const edgelut_model* m) { return m ? static_cast<int32_t>(m->engine->n_ctx()) : 0; }
int32_t edgelut_model_n_layers(const edgelut_model* m) {
  return m ? static_cast<int32_t>(m->engine->config().n_layers) : 0;
}
int32_t edgelut_model_n_past(const edgelut_model* m) { return m ? static_cast<int32_t>(m->engine->n_past()) : 0; }
int32_t edgelut_model_window(const edgelut_model* m) {
  return m && m->engine->pager() ? m->engine->pager()->window() : 0;
}

int edgelut_model_has_tokenizer(const edgelut_model* m) {
  g_error.clear();
  if (!m) {
    set_error(EDGELUT_ERR_INVALID_ARGUMENT, "model is NULL");
    return 0;
  }
  if (!m->tokenizer) set_error(EDGELUT_ERR_NO_TOKENIZER, m->tokenizer_error);
  return m->tokenizer ? 1 : 0;
}

edgelut_status edgelut_model_eos_tokens(const edgelut_model* m, int32_t* ids, size_t capacity, size_t* n_ids) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    copy_out(m->eos.data(), m->eos.size(), ids, capacity, n_ids, "n_ids");
  });
}

edgelut_status edgelut_tokenize(edgelut_model* m, const char* text, int add_special, int32_t* ids, size_t capacity,
                                size_t* n_ids) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    require_ptr(text, "text");
    const std::vector<int32_t> out = need_tokenizer(m).encode(text, add_special != 0);
    copy_out(out.data(), out.size(), ids, capacity, n_ids, "n_ids");
  });
}

edgelut_status edgelut_detokenize(edgelut_model* m, const int32_t* ids, size_t n_ids, char* text, size_t capacity,
                                  size_t* length) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    if (n_ids) require_ptr(ids, "ids");
    const int64_t vocab = m->engine->config().vocab_size;
    for (size_t i = 0; i < n_ids; ++i)
      require_arg(ids[i] >= 0 && ids[i] < vocab, "token id " + std::to_string(ids[i]) + " at index " +
                                                     std::to_string(i) + " is outside the vocabulary [0, " +
                                                     std::to_string(vocab) + ")");
    copy_text(need_tokenizer(m).decode(ids, n_ids), text, capacity, length);
  });
}

edgelut_status edgelut_chat_template(edgelut_model* m, const edgelut_chat_message* messages, size_t n_messages,
                                     int add_generation_prompt, char* text, size_t capacity, size_t* length) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    copy_text(render_chat(m, messages, n_messages, add_generation_prompt != 0), text, capacity, length);
  });
}

edgelut_status edgelut_eval(edgelut_model* m, const int32_t* ids, size_t n_ids, int32_t start_pos, int all_logits,
                            float* logits, size_t logits_capacity) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    require_ptr(ids, "ids");
    require_ptr(logits, "logits");
    require_arg(n_ids > 0, "eval: ids is empty");
    Engine& e = *m->engine;
    require_arg(start_pos >= 0 && start_pos <= e.n_past(),
                "eval: start_pos " + std::to_string(start_pos) + " must be in [0, " + std::to_string(e.n_past()) +
                    "] (the KV cache holds " + std::to_string(e.n_past()) + " tokens)");
    if (static_cast<int64_t>(start_pos) + static_cast<int64_t>(n_ids) > e.n_ctx())
      fail(EDGELUT_ERR_CONTEXT_FULL, "eval: " + std::to_string(n_ids) + " tokens at position " +
                                         std::to_string(start_pos) + " do not fit the context of " +
                                         std::to_string(e.n_ctx()) + " tokens (n_ctx)");
    const size_t vocab = static_cast<size_t>(e.config().vocab_size);
    const size_t need = (all_logits ? n_ids : 1) * vocab;
    if (logits_capacity < need)
      fail(EDGELUT_ERR_BUFFER_TOO_SMALL, "eval: the logits buffer holds " + std::to_string(logits_capacity) +
                                             " floats, " + std::to_string(need) + " needed");
    m->cache_ids.resize(std::min<size_t>(m->cache_ids.size(), static_cast<size_t>(start_pos)));
    e.eval(ids, static_cast<int64_t>(n_ids), start_pos, logits, all_logits != 0);
    m->cache_ids.insert(m->cache_ids.end(), ids, ids + n_ids);
  });
}

edgelut_status edgelut_reset(edgelut_model* m) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    m->engine->reset();
    m->cache_ids.clear();
  });
}

void edgelut_sampling_params_init(edgelut_sampling_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  const edgelut::SamplerParams d;
  p->temperature = d.temperature;
  p->top_k = d.top_k;
  p->top_p = d.top_p;
  p->min_p = d.min_p;
  p->repeat_penalty = d.repeat_penalty;
  p->repeat_last_n = d.repeat_last_n;
  p->seed = d.seed;
}

edgelut_status edgelut_sampler_new(const edgelut_sampling_params* params, edgelut_sampler** out) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(out, "out");
    *out = nullptr;
    require_ptr(params, "params");
    *out = new edgelut_sampler{edgelut::Sampler(sampler_params(*params))};
  });
}

void edgelut_sampler_free(edgelut_sampler* sampler) { delete sampler; }

edgelut_status edgelut_sampler_sample(edgelut_sampler* s, const float* logits, size_t n_vocab, const int32_t* recent,
                                      size_t n_recent, int32_t* token) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(s, "sampler");
    require_ptr(logits, "logits");
    require_ptr(token, "token");
    if (n_recent) require_ptr(recent, "recent");
    *token = s->sampler.sample(logits, static_cast<int64_t>(n_vocab), recent, static_cast<int64_t>(n_recent));
  });
}

void edgelut_generate_params_init(edgelut_generate_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->max_tokens = 128;
  edgelut_sampling_params_init(&p->sampling);
}

edgelut_status edgelut_generate(edgelut_model* m, const int32_t* ids, size_t n_ids,
                                const edgelut_generate_params* params, edgelut_generate_result* result) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    require_arg(n_ids > 0, "the prompt is empty");
    require_ptr(ids, "ids");
    generate(m, std::vector<int32_t>(ids, ids + n_ids), params, result);
  });
}

edgelut_status edgelut_generate_text(edgelut_model* m, const char* prompt, const edgelut_generate_params* params,
                                     edgelut_generate_result* result) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    require_ptr(prompt, "prompt");
    generate(m, need_tokenizer(m).encode(prompt, true), params, result);
  });
}

edgelut_status edgelut_chat(edgelut_model* m, const edgelut_chat_message* messages, size_t n_messages,
                            const edgelut_generate_params* params, edgelut_generate_result* result) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(m, "model");
    // The template writes any BOS itself.
    const std::string prompt = render_chat(m, messages, n_messages, true);
    generate(m, need_tokenizer(m).encode(prompt, false), params, result);
  });
}

}  // extern "C"

void edgelut_worker_params_init(edgelut_worker_params* p) {
  if (!p) return;
  *p = edgelut_worker_params{};
  p->struct_size = sizeof(edgelut_worker_params);
  p->rank = 1;
  p->ranks = 2;
  p->n_ctx = 2048;
  p->kv_type = "f16";
  p->timeout_seconds = 5.0;
  p->join_seconds = 60.0;
}

edgelut_status edgelut_worker_run(const char* path, const char* connect_url, const edgelut_worker_params* params) {
  return guarded(EDGELUT_ERR_INVALID_ARGUMENT, [&] {
    require_ptr(path, "path");
    require_ptr(connect_url, "connect_url");
    edgelut_worker_params p;
    edgelut_worker_params_init(&p);
    if (params) {
      require_arg(params->struct_size >= sizeof(edgelut_worker_params),
                  "edgelut_worker_params: struct_size is not set (call edgelut_worker_params_init)");
      p = *params;
    }
    require_arg(p.ranks >= 2 && p.rank >= 1 && p.rank < p.ranks,
                "rank " + std::to_string(p.rank) + " must be 1.." + std::to_string(p.ranks - 1) + " of " +
                    std::to_string(p.ranks) + " devices (ranks >= 2)");
    require_arg(p.n_ctx >= 1, "n_ctx must be >= 1");
    require_arg(p.timeout_seconds > 0 && p.join_seconds > 0, "timeout_seconds and join_seconds must be > 0");
    edgelut::EngineOptions o;
    o.n_ctx = p.n_ctx;
    o.n_threads = p.n_threads;
    o.kv_type = edgelut::kv_type_from_name(p.kv_type ? p.kv_type : "f16");
    edgelut::net::WorkerOptions w;
    // A shard file (`edgelut shard`, heads or layers) holds its spec; a whole file is sliced evenly.
    std::optional<edgelut::ShardSpec> shard;
    {
      edgelut::ModelFile mf(path, false);
      const edgelut::Config c = edgelut::config_from_file(mf);
      const int64_t world = mf.find("edgelut.shard.world_size") ? mf.get_int("edgelut.shard.world_size") : 1;
      if (world > 1) {
        const int64_t rank = mf.get_int("edgelut.shard.rank");
        require_arg(world == p.ranks && rank == p.rank,
                    std::string(path) + " is shard " + std::to_string(rank + 1) + " of " + std::to_string(world) +
                        "; this device is " + std::to_string(p.rank + 1) + " of " + std::to_string(p.ranks));
      } else {
        shard = edgelut::even_shard(c, p.rank, p.ranks);
      }
      w.hello = edgelut::net::describe_shard(mf, c, shard ? *shard : edgelut::shard_from_file(mf, c), p.rank,
                                             p.ranks, o);
    }
    w.connect = connect_url;
    w.join_timeout_s = p.join_seconds;
    w.link.libzmq = p.libzmq ? p.libzmq : "";
    w.link.timeout_s = p.timeout_seconds;
    w.link.keys.insecure = p.insecure != 0;
    w.link.keys.public_key = p.public_key ? p.public_key : "";
    w.link.keys.secret_key = p.secret_key ? p.secret_key : "";
    w.link.keys.server_key = p.server_key ? p.server_key : "";
    volatile int* stop = p.stop;
    if (stop) w.should_stop = [stop] { return *stop != 0; };
    std::shared_ptr<edgelut::net::WorkerLink> link;
    try {
      link = std::make_shared<edgelut::net::WorkerLink>(w);
    } catch (const std::runtime_error& e) {  // libzmq missing or too old
      fail(EDGELUT_ERR_NETWORK, e.what());
    }
    auto engine = edgelut::engine_from_file(path, o, edgelut::PagingOptions{}, shard, link);
    try {
      link->serve(*engine);
    } catch (const edgelut::net::PeerError&) {
      throw;
    } catch (const std::runtime_error& e) {  // stopped
      fail(EDGELUT_ERR_NETWORK, e.what());
    }
  });
}
