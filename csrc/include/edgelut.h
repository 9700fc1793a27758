/* edgelut C ABI: run an edgelut model file (.elut) from C, C++ or any FFI.
 *
 * Conventions
 *   - Every function that can fail returns an edgelut_status; EDGELUT_OK is 0.
 *     On failure edgelut_last_error() holds a one-line message for the calling
 *     thread (valid until that thread's next edgelut call). No C++ exception
 *     ever crosses this boundary and the library never aborts the process.
 *   - Handles are opaque and come in create/free pairs; *_free(NULL) is a no-op.
 *   - Structs that may grow start with struct_size: fill them with the matching
 *     *_init() function, then set the fields you need.
 *   - Functions that fill a caller buffer take its capacity and report the size
 *     needed; with a buffer too small they return EDGELUT_ERR_BUFFER_TOO_SMALL
 *     (call with capacity 0 to ask for the size).
 *   - One edgelut_model holds one KV cache (one conversation). Calls on one
 *     model must not overlap; distinct models may be used from distinct threads.
 *
 * Text (tokenize, detokenize, chat templates, the text pieces given to the
 * token callback) goes through a tokenizer backend loaded at run time: the
 * C library of onnxruntime-genai (pip install onnxruntime-genai), which reads
 * the Hugging Face tokenizer stored in the model file. It needs ONNX Runtime's
 * library, found beside it (the onnxruntime wheel) or via
 * $EDGELUT_ONNXRUNTIME_LIB. Everything that works on token ids (eval, sample,
 * generate from ids) works without a backend.
 */
#ifndef EDGELUT_H
#define EDGELUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGELUT_API __declspec(dllexport)
#else
#define EDGELUT_API __attribute__((visibility("default")))
#endif

/* Bumped when an existing declaration changes incompatibly. */
#define EDGELUT_ABI_VERSION 1

/* Status codes. Every failing call also sets edgelut_last_error(): one line
 * that, for a file, starts with its path. */
typedef enum edgelut_status {
  EDGELUT_OK = 0,
  /* A NULL pointer, an id outside the vocabulary, a sampling parameter out of
   * range, a load parameter that cannot work (n_ctx < 1, an unknown kv_type, a
   * window or memory_budget too small for the model, page_output without
   * paging), or a call on a model in the wrong state. */
  EDGELUT_ERR_INVALID_ARGUMENT = 1,
  /* The path cannot be read as a file: missing, unreadable, a directory, FIFO,
   * socket or device (refused after a stat, before it is opened, so a FIFO
   * never blocks), or a read of a paged layer failed. */
  EDGELUT_ERR_IO = 2,
  /* Anything wrong with the file's content: not GGUF, a llama.cpp GGUF not
   * converted, a newer format version, truncated, a count/length/offset/type
   * that does not fit the file, duplicate keys or tensors, a hyper-parameter out
   * of range, a missing or misshapen tensor, a CRC32 mismatch. */
  EDGELUT_ERR_INVALID_MODEL = 3,
  EDGELUT_ERR_CONTEXT_FULL = 4,     /* the tokens do not fit the context (n_ctx) */
  EDGELUT_ERR_NO_TOKENIZER = 5,     /* no tokenizer backend (or the model has no tokenizer/template) */
  EDGELUT_ERR_TOKENIZER = 6,        /* the tokenizer backend reported an error */
  EDGELUT_ERR_BUFFER_TOO_SMALL = 7, /* the caller's buffer is too small; the size needed was stored */
  EDGELUT_ERR_OUT_OF_MEMORY = 8,    /* an allocation failed */
  EDGELUT_ERR_INTERNAL = 9,         /* a bug in edgelut: please report it with edgelut_last_error() */
  /* A tensor-parallel peer refused this device (key, model, shard), vanished,
   * went silent past the timeout or broke the protocol; or libzmq is missing. */
  EDGELUT_ERR_NETWORK = 10
} edgelut_status;

/* Why a generation stopped. */
typedef enum edgelut_stop_reason {
  EDGELUT_STOP_EOS = 0,      /* an end-of-sequence token was sampled (it is reported to the callback) */
  EDGELUT_STOP_LENGTH = 1,   /* max_tokens reached */
  EDGELUT_STOP_CONTEXT = 2,  /* the context (n_ctx) is full */
  EDGELUT_STOP_CALLBACK = 3  /* the token callback returned nonzero */
} edgelut_stop_reason;

typedef struct edgelut_model edgelut_model;     /* weights, KV cache, tokenizer */
typedef struct edgelut_sampler edgelut_sampler; /* sampling state (its random generator) */

/* ---- library ------------------------------------------------------------ */

EDGELUT_API const char* edgelut_version(void);     /* "0.1.0" */
EDGELUT_API int edgelut_abi_version(void);         /* EDGELUT_ABI_VERSION of the library */
EDGELUT_API const char* edgelut_last_error(void);  /* "" when the last call succeeded */
EDGELUT_API const char* edgelut_status_name(edgelut_status status);

/* ---- loading -------------------------------------------------------------- */

typedef struct edgelut_load_params {
  size_t struct_size;
  int32_t n_ctx;      /* context length in tokens (default 2048) */
  int32_t n_threads;  /* 0 = every core */
  const char* kv_type; /* KV cache element type: "f16" (default) or "f32" */
  /* Weight paging (see docs/ARCHITECTURE.md): window = layers resident at a
   * time (0 = every layer through the file mapping); memory_budget in bytes
   * picks the largest window that fits (0 = none). */
  int32_t window;
  uint64_t memory_budget;
  int32_t drop_cache;  /* 1: drop paged layers from the page cache after use */
  int32_t direct_io;   /* 1: read paged layers with O_DIRECT */
  int32_t verify_crc;  /* 1 (default): check every tensor's CRC32 at load */
  /* Path of libonnxruntime-genai.so; NULL: $EDGELUT_TOKENIZER_LIB, else the
   * dynamic linker's search for "libonnxruntime-genai.so". "" loads no backend. */
  const char* tokenizer_lib;
  /* 1: map the file instead of reading a resident model into huge-page
   * memory (slower decode; the pages stay shared with the page cache). Added
   * after ABI 1's first release: a struct_size that ends before it means 0. */
  int32_t use_mmap;
} edgelut_load_params;

EDGELUT_API void edgelut_load_params_init(edgelut_load_params* params);

/* Loads a model file. params may be NULL (defaults). A missing tokenizer
 * backend does not fail the load: the text functions report it later. */
EDGELUT_API edgelut_status edgelut_model_load(const char* path, const edgelut_load_params* params,
                                              edgelut_model** out);
EDGELUT_API void edgelut_model_free(edgelut_model* model);

EDGELUT_API int32_t edgelut_model_n_vocab(const edgelut_model* model);
EDGELUT_API int32_t edgelut_model_n_ctx(const edgelut_model* model);
EDGELUT_API int32_t edgelut_model_n_layers(const edgelut_model* model);
EDGELUT_API int32_t edgelut_model_n_past(const edgelut_model* model);  /* tokens in the KV cache */
EDGELUT_API int32_t edgelut_model_window(const edgelut_model* model);  /* paging window, 0 = none */
/* 1 when text functions are available; otherwise 0 and edgelut_last_error() says why. */
EDGELUT_API int edgelut_model_has_tokenizer(const edgelut_model* model);
/* The end-of-sequence ids (up to capacity are written; *n_ids = how many there are). */
EDGELUT_API edgelut_status edgelut_model_eos_tokens(const edgelut_model* model, int32_t* ids, size_t capacity,
                                                    size_t* n_ids);

/* ---- text ------------------------------------------------------------------ */

/* add_special: add what the tokenizer adds around a text (e.g. BOS), as
 * Hugging Face's add_special_tokens. Special-token text such as <|im_end|> is
 * parsed as the special token. */
EDGELUT_API edgelut_status edgelut_tokenize(edgelut_model* model, const char* text, int add_special, int32_t* ids,
                                            size_t capacity, size_t* n_ids);
/* UTF-8 text of ids (special tokens included), NUL-terminated; *length excludes the NUL. */
EDGELUT_API edgelut_status edgelut_detokenize(edgelut_model* model, const int32_t* ids, size_t n_ids, char* text,
                                              size_t capacity, size_t* length);

typedef struct edgelut_chat_message {
  const char* role;    /* "system", "user", "assistant" */
  const char* content; /* UTF-8 */
} edgelut_chat_message;

/* The prompt text for messages, rendered with the model's own chat template. */
EDGELUT_API edgelut_status edgelut_chat_template(edgelut_model* model, const edgelut_chat_message* messages,
                                                 size_t n_messages, int add_generation_prompt, char* text,
                                                 size_t capacity, size_t* length);

/* ---- evaluation -------------------------------------------------------------- */

/* Runs ids at positions start_pos.. (0 <= start_pos <= n_past; later positions
 * are forgotten) and writes the logits of the last token (n_vocab floats) or,
 * with all_logits, of every token (n_ids * n_vocab floats, row-major). */
EDGELUT_API edgelut_status edgelut_eval(edgelut_model* model, const int32_t* ids, size_t n_ids, int32_t start_pos,
                                        int all_logits, float* logits, size_t logits_capacity);
/* Forgets the KV cache. */
EDGELUT_API edgelut_status edgelut_reset(edgelut_model* model);

/* ---- sampling ------------------------------------------------------------------ */

typedef struct edgelut_sampling_params {
  size_t struct_size;
  float temperature;      /* 0 = greedy (default 0.8) */
  int32_t top_k;          /* 0 = off (default 40) */
  float top_p;            /* 1 = off (default 0.95) */
  float min_p;            /* 0 = off (default 0.05) */
  float repeat_penalty;   /* 1 = off (default 1) */
  int32_t repeat_last_n;  /* tokens the penalty looks back over (default 64) */
  uint64_t seed;          /* same seed, same tokens (default 0) */
} edgelut_sampling_params;

EDGELUT_API void edgelut_sampling_params_init(edgelut_sampling_params* params);

/* Validates params (EDGELUT_ERR_INVALID_ARGUMENT naming the bad one). */
EDGELUT_API edgelut_status edgelut_sampler_new(const edgelut_sampling_params* params, edgelut_sampler** out);
EDGELUT_API void edgelut_sampler_free(edgelut_sampler* sampler);
/* Picks a token from logits (n_vocab floats); recent = previous tokens, oldest
 * first (for the repetition penalty; may be NULL when n_recent is 0). */
EDGELUT_API edgelut_status edgelut_sampler_sample(edgelut_sampler* sampler, const float* logits, size_t n_vocab,
                                                  const int32_t* recent, size_t n_recent, int32_t* token);

/* ---- generation ---------------------------------------------------------------- */

/* Called for every sampled token, end-of-sequence tokens included. piece is
 * the UTF-8 text completed by this token (may be empty: a character split
 * across tokens comes with its last token; EOS tokens and a model without a
 * tokenizer give ""). It is NUL-terminated and valid during the call only.
 * Return 0 to go on, nonzero to stop. */
typedef int (*edgelut_token_callback)(int32_t token, const char* piece, size_t piece_length, void* user_data);

typedef struct edgelut_generate_params {
  size_t struct_size;
  int32_t max_tokens;               /* >= 1 (default 128) */
  edgelut_sampling_params sampling;
  edgelut_token_callback on_token;  /* may be NULL */
  void* user_data;
} edgelut_generate_params;

EDGELUT_API void edgelut_generate_params_init(edgelut_generate_params* params);

typedef struct edgelut_generate_result {
  int32_t n_prompt;     /* prompt tokens */
  int32_t n_cached;     /* of which were reused from the KV cache */
  int32_t n_generated;  /* sampled tokens */
  edgelut_stop_reason stop_reason;
  double prefill_seconds, decode_seconds;
} edgelut_generate_result;

/* Continues ids: the longest prefix shared with what the KV cache holds is
 * reused (chat turns only evaluate the new turn). A prompt that does not fit
 * the context is EDGELUT_ERR_CONTEXT_FULL; a context that fills while
 * generating stops with EDGELUT_STOP_CONTEXT. result may be NULL. */
EDGELUT_API edgelut_status edgelut_generate(edgelut_model* model, const int32_t* ids, size_t n_ids,
                                            const edgelut_generate_params* params, edgelut_generate_result* result);
/* The same from text (tokenized with add_special). */
EDGELUT_API edgelut_status edgelut_generate_text(edgelut_model* model, const char* prompt,
                                                 const edgelut_generate_params* params,
                                                 edgelut_generate_result* result);
/* Replies to a conversation: the chat template with the generation prompt, then edgelut_generate. */
EDGELUT_API edgelut_status edgelut_chat(edgelut_model* model, const edgelut_chat_message* messages,
                                        size_t n_messages, const edgelut_generate_params* params,
                                        edgelut_generate_result* result);

/* ---- tensor-parallel worker ------------------------------------------------------ */

/* An app serving as one device of a group that splits a model over several
 * devices (docs/ARCHITECTURE.md, "Tensor parallelism over a network"). The
 * worker dials out to the coordinator (no listening port needed), joins with
 * its CURVE key, holds its even slice of the model file's layers and runs
 * every eval the coordinator sends. libzmq (>= 4.3, with CURVE) is loaded at
 * run time; pyzmq's wheel carries one. */
typedef struct edgelut_worker_params {
  size_t struct_size;
  int32_t rank;             /* this device, 1..ranks-1 (the coordinator is 0) */
  int32_t ranks;            /* devices in the group, the coordinator included (>= 2) */
  int32_t n_ctx;            /* must equal the coordinator's (default 2048) */
  int32_t n_threads;        /* 0 = every core */
  const char* kv_type;      /* "f16" (default), "f32" or "q8" */
  double timeout_seconds;   /* a coordinator silent this long mid-eval is gone (default 5) */
  double join_seconds;      /* waiting for the coordinator to answer the hello (default 60) */
  int32_t insecure;         /* 1: plain text, no authentication (the coordinator must agree) */
  const char* public_key;   /* this device's CURVE key pair, Z85 (40 characters; edgelut keygen) */
  const char* secret_key;
  const char* server_key;   /* the coordinator's public key */
  const char* libzmq;       /* path of libzmq; NULL or "": "libzmq.so.5" */
  /* Optional: set *stop nonzero (from another thread or a signal handler) and
   * the worker returns EDGELUT_ERR_NETWORK within about 0.2 s. */
  volatile int* stop;
} edgelut_worker_params;

EDGELUT_API void edgelut_worker_params_init(edgelut_worker_params* params);

/* Joins the coordinator at connect_url ("tcp://HOST:PORT") and serves until it
 * closes the group: EDGELUT_OK. path is a whole model file (this device's even
 * slice of every layer is cut at load) or this rank's shard file of
 * `edgelut shard` (a slice of every layer, or a range of layers). Refused (key, model, shard), a coordinator
 * that vanishes or goes silent: EDGELUT_ERR_NETWORK with the reason in
 * edgelut_last_error(). Blocks the calling thread. */
EDGELUT_API edgelut_status edgelut_worker_run(const char* path, const char* connect_url,
                                              const edgelut_worker_params* params);

#ifdef __cplusplus
}
#endif

#endif /* EDGELUT_H */
