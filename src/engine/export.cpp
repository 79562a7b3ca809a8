// Loading any language-model file and exporting it (include/flexquant/export.h).
#include "flexquant/export.h"

#include <filesystem>

#include "flexquant/error.h"
#include "flexquant/qmodel.h"

namespace flexquant {
namespace fs = std::filesystem;

namespace {
bool has_ext(const std::string& p, const char* ext) { return fs::path(p).extension() == ext; }

std::unique_ptr<LlamaModel> load_fp(const std::string& path) {
  return has_ext(path, ".gguf") ? load_llama_gguf(path) : load_language_model(path);
}
}  // namespace

LoadedLanguageModel load_language_model_any(const std::string& path, const std::string& tokenizer) {
  FQ_CHECK(fs::exists(path), IoError, "model \"", path, "\" does not exist");
  LoadedLanguageModel m;
  m.source = has_ext(path, ".fqz") ? read_qmodel_info(path).source_model : path;
  FQ_CHECK(fs::exists(m.source), IoError, "\"", path, "\" was quantized from \"", m.source,
           "\", which does not exist here -> put the source model back at that path");
  m.model = load_fp(m.source);
  if (has_ext(path, ".fqz")) load_qmodel(path, *m.model, m.state);
  if (!tokenizer.empty()) m.tokenizer = Tokenizer::load(tokenizer);
  else if (has_ext(m.source, ".gguf")) m.tokenizer = load_gguf_tokenizer(m.source);
  else {
    const std::string tok = (fs::path(m.source).parent_path() / "tok512.bin").string();
    FQ_CHECK(fs::exists(tok), IoError, "no tokenizer given and \"", tok, "\" does not exist -> pass --tokenizer");
    m.tokenizer = Tokenizer::load(tok);
  }
  return m;
}

GgufExportReport export_gguf_file(const std::string& in, const std::string& tokenizer, const std::string& type,
                                  const std::string& out, bool exact_fallback) {
  FQ_CHECK(fs::absolute(in) != fs::absolute(out), ConfigError, "--out \"", out, "\" is the input; choose another path");
  LoadedLanguageModel m = load_language_model_any(in, tokenizer);
  GgufExportOptions o;
  o.name = fs::path(m.source).stem().string();
  o.exact_fallback = exact_fallback;
  if (type != "auto") o.type = parse_ggml_type(type);
  else if (!m.state.weights.empty()) o.type = gguf_type_for(m.state.weights.begin()->second.spec);
  return export_gguf(*m.model, m.state, m.tokenizer, o, out);
}

}  // namespace flexquant
