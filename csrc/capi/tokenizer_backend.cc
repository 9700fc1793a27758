#include "tokenizer_backend.h"

#include <dlfcn.h>
#include <glob.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "../io/model_file.h"

namespace edgelut {

// The backend's C entry points we use, declared from its public C API
// (ort_genai_c.h): every fallible call returns a result object that is null
// on success and otherwise carries the error text.
struct BackendApi {
  using Result = void;
  const char* (*result_get_error)(const Result*);
  void (*destroy_result)(Result*);
  void (*destroy_string)(const char*);
  Result* (*create_tokenizer_from_path)(const char* dir, void** out);
  void (*destroy_tokenizer)(void*);
  Result* (*update_tokenizer_options)(void* tok, const char* const* keys, const char* const* values, size_t n);
  Result* (*create_sequences)(void** out);
  void (*destroy_sequences)(void*);
  size_t (*sequences_get_sequence_count)(const void* seqs, size_t index);
  const int32_t* (*sequences_get_sequence_data)(const void* seqs, size_t index);
  Result* (*tokenizer_encode)(const void* tok, const char* text, void* seqs);
  Result* (*tokenizer_decode)(const void* tok, const int32_t* ids, size_t n, const char** out);
  Result* (*tokenizer_to_token_id)(const void* tok, const char* text, int32_t* id);
  Result* (*apply_chat_template)(const void* tok, const char* tmpl, const char* messages, const char* tools,
                                 bool add_generation_prompt, const char** out);
  Result* (*create_tokenizer_stream)(const void* tok, void** out);
  void (*destroy_tokenizer_stream)(void*);
  Result* (*tokenizer_stream_decode)(void* stream, int32_t token, const char** out);

  // Throws TokenizerError with the backend's message when r is an error.
  void check(Result* r, const char* what) const {
    if (!r) return;
    std::string msg = result_get_error(r) ? result_get_error(r) : "unknown error";
    destroy_result(r);
    for (char& ch : msg)
      if (ch == '\n' || ch == '\r') ch = ' ';
    throw TokenizerError(std::string("tokenizer backend: ") + what + ": " + msg);
  }
};

namespace {

constexpr const char* kDefaultLib = "libonnxruntime-genai.so";

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string first_match(const std::string& pattern) {
  glob_t g{};
  std::string out;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0) out = g.gl_pathv[0];
  ::globfree(&g);
  return out;
}

// The backend loads the ONNX Runtime library itself on first use and, when it
// cannot find it, throws through its C API and terminates the process. So it
// is found here first: $ORT_LIB_PATH (the backend's own variable),
// $EDGELUT_ONNXRUNTIME_LIB, the onnxruntime wheel installed beside the
// backend's wheel (backend_path is the path as given; without a '/' only the
// variables and the dynamic linker are tried). Returns "" when none is found.
std::string locate_onnxruntime(const std::string& backend_path) {
  for (const char* var : {"ORT_LIB_PATH", "EDGELUT_ONNXRUNTIME_LIB"}) {
    const char* v = std::getenv(var);
    if (v && *v) return ::access(v, R_OK) == 0 ? v : "";
  }
  const std::string dir = backend_path.find('/') == std::string::npos ? std::string() : dir_of(backend_path);
  if (!dir.empty())
    for (const std::string& pattern : {dir + "/../onnxruntime/capi/libonnxruntime.so*", dir + "/libonnxruntime.so*"})
      if (const std::string found = first_match(pattern); !found.empty()) return found;
  for (const char* name : {"libonnxruntime.so.1", "libonnxruntime.so"}) {
    if (void* h = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      ::dlclose(h);
      return name;
    }
  }
  return "";
}

template <typename F>
void resolve(void* lib, const std::string& path, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(::dlsym(lib, name));
  if (!*fn)
    throw TokenizerUnavailable("the tokenizer backend " + path + " has no " + name +
                               " (it needs onnxruntime-genai >= 0.18)");
}

// One resolved backend per library path, kept for the life of the process
// (the backend has process-wide state; unloading it is not supported).
const BackendApi* load_backend(const std::string& requested) {
#if defined(EDGELUT_NO_DLOPEN)
  // A static executable (tools/build_static_aarch64.sh, musl) cannot dlopen,
  // and onnxruntime-genai has no static build to link in instead.
  (void)requested;
  throw TokenizerUnavailable(
      "this is a static build of edgelut, which cannot load the tokenizer library (onnxruntime-genai); "
      "give token ids instead (edgelut-chat --ids; tools/token_ids.py makes them)");
#endif
  static std::mutex mu;
  static std::map<std::string, BackendApi> loaded;
  std::string path = requested;
  if (path.empty()) {
    const char* env = std::getenv("EDGELUT_TOKENIZER_LIB");
    path = env && *env ? env : kDefaultLib;
  }
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = loaded.find(path); it != loaded.end()) return &it->second;

  if (path.find('/') != std::string::npos && ::access(path.c_str(), R_OK) != 0)
    throw TokenizerUnavailable("no tokenizer backend: " + path +
                               " does not exist; pip install onnxruntime-genai and set EDGELUT_TOKENIZER_LIB to its "
                               "libonnxruntime-genai.so (edgelut.capi.tokenizer_library() prints it)");
  // The backend loads ONNX Runtime while it is being loaded (a static
  // initializer) and terminates the process when it cannot: find it first.
  const std::string ort = locate_onnxruntime(path);
  if (ort.empty())
    throw TokenizerUnavailable("the tokenizer backend " + path +
                               " needs the ONNX Runtime library: pip install onnxruntime, or set "
                               "EDGELUT_ONNXRUNTIME_LIB to its libonnxruntime.so");
  // The backend reads this variable to find ONNX Runtime.
  ::setenv("ORT_LIB_PATH", ort.c_str(), 0);
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = ::dlerror();
    throw TokenizerUnavailable("no tokenizer backend: cannot load " + path + " (" + (why ? why : "unknown") +
                               "); pip install onnxruntime-genai and set EDGELUT_TOKENIZER_LIB to its "
                               "libonnxruntime-genai.so (edgelut.capi.tokenizer_library() prints it)");
  }
  BackendApi api{};
  resolve(lib, path, "OgaResultGetError", &api.result_get_error);
  resolve(lib, path, "OgaDestroyResult", &api.destroy_result);
  resolve(lib, path, "OgaDestroyString", &api.destroy_string);
  resolve(lib, path, "OgaCreateTokenizerFromPath", &api.create_tokenizer_from_path);
  resolve(lib, path, "OgaDestroyTokenizer", &api.destroy_tokenizer);
  resolve(lib, path, "OgaUpdateTokenizerOptions", &api.update_tokenizer_options);
  resolve(lib, path, "OgaCreateSequences", &api.create_sequences);
  resolve(lib, path, "OgaDestroySequences", &api.destroy_sequences);
  resolve(lib, path, "OgaSequencesGetSequenceCount", &api.sequences_get_sequence_count);
  resolve(lib, path, "OgaSequencesGetSequenceData", &api.sequences_get_sequence_data);
  resolve(lib, path, "OgaTokenizerEncode", &api.tokenizer_encode);
  resolve(lib, path, "OgaTokenizerDecode", &api.tokenizer_decode);
  resolve(lib, path, "OgaTokenizerToTokenId", &api.tokenizer_to_token_id);
  resolve(lib, path, "OgaTokenizerApplyChatTemplate", &api.apply_chat_template);
  resolve(lib, path, "OgaCreateTokenizerStream", &api.create_tokenizer_stream);
  resolve(lib, path, "OgaDestroyTokenizerStream", &api.destroy_tokenizer_stream);
  resolve(lib, path, "OgaTokenizerStreamDecode", &api.tokenizer_stream_decode);

  return &loaded.emplace(path, api).first->second;
}

// A private directory with the files the backend reads; removed on destruction.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgelut-tokenizer-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("tokenizer: cannot create a directory in " + dir_of(tmpl));
    path_ = tmpl;
  }
  ~TempDir() {
    for (const std::string& f : files_) ::unlink(f.c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void write(const std::string& name, const std::string& text) {
    const std::string file = path_ + "/" + name;
    files_.push_back(file);
    std::FILE* f = std::fopen(file.c_str(), "wb");
    const bool ok = f && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (f) std::fclose(f);
    if (!ok) throw std::runtime_error("tokenizer: cannot write " + file);
  }

 private:
  std::string path_;
  std::vector<std::string> files_;
};

std::string meta_string(const ModelFile& mf, const std::string& key) {
  const GgufValue* v = mf.find(key);
  return v && v->type == GgufType::String ? v->s : std::string();
}

int64_t meta_int(const ModelFile& mf, const std::string& key, int64_t fallback) {
  const GgufValue* v = mf.find(key);
  return v && v->type != GgufType::String && v->type != GgufType::Array ? v->i : fallback;
}

}  // namespace

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

TokenStream::~TokenStream() { api_->destroy_tokenizer_stream(h_); }

std::string TokenStream::push(int32_t token) {
  const char* out = nullptr;
  api_->check(api_->tokenizer_stream_decode(h_, token, &out), "stream decode");
  return out ? out : "";
}

std::unique_ptr<Tokenizer> Tokenizer::create(const std::string& lib, const ModelFile& mf) {
  const std::string tokenizer_json = meta_string(mf, "edgelut.tokenizer.json");
  if (tokenizer_json.empty())
    throw TokenizerUnavailable(mf.path() + " stores no tokenizer (edgelut.tokenizer.json); use token ids");
  const BackendApi* api = load_backend(lib);

  const ModelHParams& h = mf.hparams();
  const int64_t bos = meta_int(mf, "tokenizer.ggml.bos_token_id", -1);
  const int64_t eos = meta_int(mf, "tokenizer.ggml.eos_token_id", -1);
  const std::string bos_text = meta_string(mf, "edgelut.tokenizer.bos_token");
  const std::string eos_text = meta_string(mf, "edgelut.tokenizer.eos_token");
  const bool add_bos = meta_int(mf, "tokenizer.ggml.add_bos_token", 0) != 0;
  // The class picks the backend's decoding rules: SentencePiece-style
  // vocabularies (byte fallback) decode as Llama's, byte-level BPE as GPT-2's.
  const bool spm = tokenizer_json.find("\"byte_fallback\":true") != std::string::npos;
  const char* cls = spm ? "LlamaTokenizer" : h.architecture == "qwen2" ? "Qwen2Tokenizer" : "GPT2Tokenizer";
  const std::string type = h.architecture == "qwen2" ? "qwen2" : "llama";

  TempDir dir;
  dir.write("tokenizer.json", tokenizer_json);
  std::string cfg = std::string("{\"tokenizer_class\": \"") + cls + "\", \"add_bos_token\": " +
                    (add_bos ? "true" : "false") +
                    ", \"add_eos_token\": false, \"clean_up_tokenization_spaces\": false";
  if (!bos_text.empty()) cfg += ", \"bos_token\": " + json_quote(bos_text);
  if (!eos_text.empty()) cfg += ", \"eos_token\": " + json_quote(eos_text);
  dir.write("tokenizer_config.json", cfg + "}");
  const int64_t pad = eos >= 0 ? eos : 0;
  dir.write("genai_config.json", "{\"model\": {\"type\": \"" + type + "\", \"bos_token_id\": " +
                                     std::to_string(bos >= 0 ? bos : pad) +
                                     ", \"eos_token_id\": " + std::to_string(pad) +
                                     ", \"pad_token_id\": " + std::to_string(pad) +
                                     ", \"vocab_size\": " + std::to_string(h.vocab_size) +
                                     ", \"context_length\": " + std::to_string(h.context_length) + "}}");
  void* handle = nullptr;
  api->check(api->create_tokenizer_from_path(dir.path().c_str(), &handle), "loading the model's tokenizer");
  std::unique_ptr<Tokenizer> t(new Tokenizer(api, handle, meta_string(mf, "tokenizer.chat_template")));
  // Decode everything, special tokens included (as edgelut.Tokenizer.decode does).
  const char* keys[] = {"skip_special_tokens"};
  const char* values[] = {"false"};
  api->check(api->update_tokenizer_options(handle, keys, values, 1), "setting options");
  return t;
}

Tokenizer::~Tokenizer() { api_->destroy_tokenizer(h_); }

void Tokenizer::set_add_special(bool on) {
  if (add_special_ == static_cast<int>(on)) return;
  const char* keys[] = {"add_special_tokens"};
  const char* values[] = {on ? "true" : "false"};
  api_->check(api_->update_tokenizer_options(h_, keys, values, 1), "setting add_special_tokens");
  add_special_ = on;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special) {
  set_add_special(add_special);
  void* seqs = nullptr;
  api_->check(api_->create_sequences(&seqs), "encode");
  std::unique_ptr<void, void (*)(void*)> guard(seqs, api_->destroy_sequences);
  api_->check(api_->tokenizer_encode(h_, text.c_str(), seqs), "encode");
  const size_t n = api_->sequences_get_sequence_count(seqs, 0);
  const int32_t* data = api_->sequences_get_sequence_data(seqs, 0);
  return data ? std::vector<int32_t>(data, data + n) : std::vector<int32_t>();
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) {
  const char* out = nullptr;
  api_->check(api_->tokenizer_decode(h_, ids, n, &out), "decode");
  std::string s = out ? out : "";
  if (out) api_->destroy_string(out);
  return s;
}

std::string Tokenizer::apply_chat_template(const std::vector<std::pair<std::string, std::string>>& messages,
                                           bool add_generation_prompt) {
  std::string json = "[";
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i) json += ", ";
    json += "{\"role\": " + json_quote(messages[i].first) + ", \"content\": " + json_quote(messages[i].second) + "}";
  }
  json += "]";
  const char* out = nullptr;
  api_->check(api_->apply_chat_template(h_, template_.c_str(), json.c_str(), nullptr, add_generation_prompt, &out),
              "chat template");
  std::string s = out ? out : "";
  if (out) api_->destroy_string(out);
  return s;
}

int32_t Tokenizer::token_id(const std::string& text) {
  int32_t id = -1;
  BackendApi::Result* r = api_->tokenizer_to_token_id(h_, text.c_str(), &id);
  if (r) {
    api_->destroy_result(r);
    return -1;
  }
  return id;
}

std::unique_ptr<TokenStream> Tokenizer::stream() {
  void* s = nullptr;
  api_->check(api_->create_tokenizer_stream(h_, &s), "stream");
  return std::make_unique<TokenStream>(api_, s);
}

}  // namespace edgelut
