// The tokenizer behind the C ABI: onnxruntime-genai's C library
// (libonnxruntime-genai.so, from the onnxruntime-genai wheel), loaded with
// dlopen at run time so that libedgelut has no link-time dependency on it.
//
// The model file stores the Hugging Face tokenizer JSON and the chat template
// (docs/FORMAT.md). The backend wants a directory with genai_config.json,
// tokenizer.json and tokenizer_config.json; those are written from the
// file's metadata into a private temporary directory that is removed as soon
// as the tokenizer is built.
//
// Errors: std::runtime_error with a one-line message (TokenizerUnavailable
// when the backend cannot be loaded at all).
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace edgelut {

class ModelFile;

struct TokenizerUnavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The backend reported an error for one call.
struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BackendApi;  // the resolved entry points

// Incremental detokenizer: one per generation.
class TokenStream {
 public:
  TokenStream(const BackendApi* api, void* handle) : api_(api), h_(handle) {}
  ~TokenStream();
  TokenStream(const TokenStream&) = delete;
  TokenStream& operator=(const TokenStream&) = delete;
  // The text completed by this token (possibly empty).
  std::string push(int32_t token);

 private:
  const BackendApi* api_;
  void* h_;
};

class Tokenizer {
 public:
  // lib: path of the backend library; "" = $EDGELUT_TOKENIZER_LIB or the
  // default name. Throws TokenizerUnavailable when the backend cannot be
  // loaded and std::runtime_error when it rejects the model's tokenizer.
  static std::unique_ptr<Tokenizer> create(const std::string& lib, const ModelFile& mf);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  std::vector<int32_t> encode(const std::string& text, bool add_special);
  std::string decode(const int32_t* ids, size_t n);
  // messages: (role, content) pairs, rendered with the model's chat template.
  std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>>& messages,
                                  bool add_generation_prompt);
  bool has_chat_template() const { return !template_.empty(); }
  // -1 when the text is not one token.
  int32_t token_id(const std::string& text);
  std::unique_ptr<TokenStream> stream();

 private:
  Tokenizer(const BackendApi* api, void* handle, std::string chat_template)
      : api_(api), h_(handle), template_(std::move(chat_template)) {}
  void set_add_special(bool on);

  const BackendApi* api_;
  void* h_;
  std::string template_;
  int add_special_ = -1;  // the backend's current add_special_tokens option (-1 = unknown)
};

// Quotes s as a JSON string (UTF-8 passes through).
std::string json_quote(const std::string& s);

}  // namespace edgelut
