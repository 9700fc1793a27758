/* Chat with an edgelut model from C, through the C ABI of edgelut.h.
 *
 *   chat MODEL.elut [-s SYSTEM] [-n MAX_TOKENS] [-t TEMPERATURE] [-c N_CTX] [--seed N] [--threads N] [--ids]
 *
 * Reads one user message per line from stdin (a terminal or a pipe) and
 * streams the reply as it is generated. /reset starts a new conversation,
 * /quit (or end of input) ends. Consecutive turns share a prefix, which the
 * library keeps in its KV cache, so each turn only evaluates the new text.
 *
 * --ids skips the tokenizer (a static build has none: it cannot load the
 * tokenizer library): each line is a whole prompt as token ids separated by
 * spaces, and the reply is printed as token ids. tools/token_ids.py makes and
 * reads them on any machine with Python.
 *
 * Build: see README.md in this directory.
 */
#define _POSIX_C_SOURCE 200809L
#include <edgelut.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  char* text; /* the reply so far (NUL-terminated) */
  size_t length, capacity;
} reply_buffer;

/* --ids: prints each sampled token id. */
static int on_token_id(int32_t token, const char* piece, size_t piece_length, void* user_data) {
  (void)piece;
  (void)piece_length;
  printf("%s%d", *(int*)user_data ? " " : "", (int)token);
  *(int*)user_data = 1;
  fflush(stdout);
  return 0;
}

#define SEPARATORS " \t,\r\n"

/* Parses a line of token ids; returns the count, or -1 naming the bad word. */
static long parse_ids(const char* line, int32_t** ids, size_t* capacity) {
  size_t n = 0;
  const char* p = line;
  for (;;) {
    char* end;
    long v;
    while (*p && strchr(SEPARATORS, *p)) p++;
    if (!*p) return (long)n;
    v = strtol(p, &end, 10);
    if (end == p || (*end && !strchr(SEPARATORS, *end)) || v < 0 || v > 0x7fffffff) {
      fprintf(stderr, "error: '%.*s' is not a token id (--ids wants non-negative integers separated by spaces)\n",
              (int)strcspn(p, SEPARATORS), p);
      return -1;
    }
    if (n == *capacity) {
      size_t grown_capacity = *capacity ? 2 * *capacity : 256;
      int32_t* grown = (int32_t*)realloc(*ids, grown_capacity * sizeof *grown);
      if (!grown) return -1;
      *ids = grown;
      *capacity = grown_capacity;
    }
    (*ids)[n++] = (int32_t)v;
    p = end;
  }
}

/* The --ids loop: one prompt of token ids per line, the reply as token ids. */
static int run_ids(edgelut_model* model, edgelut_generate_params* gen) {
  char* line = NULL;
  size_t line_capacity = 0, ids_capacity = 0;
  int32_t* ids = NULL;
  int status = 0, printed;
  ssize_t n;
  gen->on_token = on_token_id;
  gen->user_data = &printed;
  while ((n = getline(&line, &line_capacity, stdin)) >= 0) {
    long count = parse_ids(line, &ids, &ids_capacity);
    edgelut_status st;
    if (count < 0) {
      status = 2;
      break;
    }
    if (count == 0) continue;
    printed = 0;
    st = edgelut_generate(model, ids, (size_t)count, gen, NULL);
    fputc('\n', stdout);
    fflush(stdout);
    if (st != EDGELUT_OK) {
      fprintf(stderr, "error: %s\n", edgelut_last_error());
      status = 1;
      break;
    }
  }
  free(ids);
  free(line);
  return status;
}

static int on_token(int32_t token, const char* piece, size_t piece_length, void* user_data) {
  reply_buffer* reply = (reply_buffer*)user_data;
  (void)token;
  if (piece_length == 0) return 0;
  fwrite(piece, 1, piece_length, stdout);
  fflush(stdout);
  if (reply->length + piece_length + 1 > reply->capacity) {
    size_t capacity = 2 * (reply->length + piece_length + 1);
    char* grown = (char*)realloc(reply->text, capacity);
    if (!grown) return 1; /* out of memory: stop generating */
    reply->text = grown;
    reply->capacity = capacity;
  }
  memcpy(reply->text + reply->length, piece, piece_length);
  reply->length += piece_length;
  reply->text[reply->length] = '\0';
  return 0;
}

/* The conversation: roles are string literals, contents are owned copies. */
typedef struct {
  edgelut_chat_message* items;
  size_t count, capacity;
} conversation;

static int add_message(conversation* c, const char* role, const char* content) {
  char* copy;
  if (c->count == c->capacity) {
    size_t capacity = c->capacity ? 2 * c->capacity : 8;
    edgelut_chat_message* grown = (edgelut_chat_message*)realloc(c->items, capacity * sizeof *grown);
    if (!grown) return -1;
    c->items = grown;
    c->capacity = capacity;
  }
  copy = (char*)malloc(strlen(content) + 1);
  if (!copy) return -1;
  strcpy(copy, content);
  c->items[c->count].role = role;
  c->items[c->count].content = copy;
  c->count++;
  return 0;
}

/* Drops every message after the first `keep`. */
static void truncate_conversation(conversation* c, size_t keep) {
  while (c->count > keep) free((void*)c->items[--c->count].content);
}

static int usage(const char* argv0) {
  fprintf(stderr,
          "usage: %s MODEL.elut [-s SYSTEM] [-n MAX_TOKENS] [-t TEMPERATURE] [-c N_CTX] [--seed N] [--threads N] "
          "[--ids]\n",
          argv0);
  return 2;
}

int main(int argc, char** argv) {
  const char* model_path = NULL;
  const char* system_prompt = NULL;
  edgelut_load_params load;
  edgelut_generate_params gen;
  edgelut_model* model = NULL;
  conversation chat = {NULL, 0, 0};
  reply_buffer reply = {NULL, 0, 0};
  size_t n_fixed;
  char* line = NULL;
  size_t line_capacity = 0;
  int interactive = isatty(STDIN_FILENO);
  int status = 0;
  int ids_mode = 0;
  int i;

  edgelut_load_params_init(&load);
  edgelut_generate_params_init(&gen);
  gen.max_tokens = 256;
  for (i = 1; i < argc; i++) {
    const char* arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : NULL;
    if (arg[0] != '-') {
      if (model_path) return usage(argv[0]);
      model_path = arg;
      continue;
    }
    if (strcmp(arg, "--ids") == 0) {
      ids_mode = 1;
      continue;
    }
    if (!value) return usage(argv[0]);
    if (strcmp(arg, "-s") == 0) system_prompt = value;
    else if (strcmp(arg, "-n") == 0) gen.max_tokens = atoi(value);
    else if (strcmp(arg, "-t") == 0) gen.sampling.temperature = (float)atof(value);
    else if (strcmp(arg, "-c") == 0) load.n_ctx = atoi(value);
    else if (strcmp(arg, "--seed") == 0) gen.sampling.seed = strtoull(value, NULL, 10);
    else if (strcmp(arg, "--threads") == 0) load.n_threads = atoi(value);
    else return usage(argv[0]);
    i++;
  }
  if (!model_path) return usage(argv[0]);

  if (edgelut_model_load(model_path, &load, &model) != EDGELUT_OK) {
    fprintf(stderr, "error: %s\n", edgelut_last_error());
    return 1;
  }
  if (ids_mode) {
    status = run_ids(model, &gen);
    edgelut_model_free(model);
    return status;
  }
  if (!edgelut_model_has_tokenizer(model)) {
    fprintf(stderr, "error: %s\n", edgelut_last_error());
    fprintf(stderr, "(chat without a tokenizer: run with --ids and give token ids; see examples/c/README.md)\n");
    edgelut_model_free(model);
    return 1;
  }
  if (system_prompt && add_message(&chat, "system", system_prompt) != 0) {
    fprintf(stderr, "error: out of memory\n");
    edgelut_model_free(model);
    return 1;
  }
  n_fixed = chat.count;
  gen.on_token = on_token;
  gen.user_data = &reply;

  for (;;) {
    ssize_t n;
    edgelut_status st;
    if (interactive) {
      fputs("> ", stdout);
      fflush(stdout);
    }
    n = getline(&line, &line_capacity, stdin);
    if (n < 0) break; /* end of input */
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (n == 0) continue;
    if (strcmp(line, "/quit") == 0) break;
    if (strcmp(line, "/reset") == 0) {
      truncate_conversation(&chat, n_fixed);
      edgelut_reset(model);
      puts("(new conversation)");
      continue;
    }
    if (add_message(&chat, "user", line) != 0) {
      fprintf(stderr, "error: out of memory\n");
      status = 1;
      break;
    }
    reply.length = 0;
    if (reply.text) reply.text[0] = '\0';
    st = edgelut_chat(model, chat.items, chat.count, &gen, NULL);
    fputc('\n', stdout);
    fflush(stdout);
    if (st == EDGELUT_ERR_CONTEXT_FULL) {
      fprintf(stderr, "error: %s\n(conversation reset)\n", edgelut_last_error());
      truncate_conversation(&chat, n_fixed);
      edgelut_reset(model);
      continue;
    }
    if (st != EDGELUT_OK) {
      fprintf(stderr, "error: %s\n", edgelut_last_error());
      status = 1;
      break;
    }
    if (add_message(&chat, "assistant", reply.text ? reply.text : "") != 0) {
      fprintf(stderr, "error: out of memory\n");
      status = 1;
      break;
    }
  }

  truncate_conversation(&chat, 0);
  free(chat.items);
  free(reply.text);
  free(line);
  edgelut_model_free(model);
  return status;
}
