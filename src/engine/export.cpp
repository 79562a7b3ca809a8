// Loading any language-model file and exporting it (include/flexquant/export.h).
#include "flexquant/export.h"

#include <filesystem>

#include "flexquant/error.h"
#include "flexquant/libggml.h"
#include "flexquant/lm_eval.h"
#include "flexquant/qmodel.h"

namespace flexquant {
namespace fs = std::filesystem;

namespace {
bool has_ext(const std::string& p, const char* ext) { return fs::path(p).extension() == ext; }
}  // namespace

LoadedLanguageModel load_language_model_any(const std::string& path, const std::string& tokenizer) {
  FQ_CHECK(fs::exists(path), IoError, "model \"", path, "\" does not exist");
  LoadedLanguageModel m;
  m.source = has_ext(path, ".fqz") ? read_qmodel_info(path).source_model : path;
  FQ_CHECK(fs::exists(m.source), IoError, "\"", path, "\" was quantized from \"", m.source,
           "\", which does not exist here -> put the source model back at that path");
  m.model = load_llama_any(m.source);
  if (has_ext(path, ".fqz")) load_qmodel(path, *m.model, m.state);
  m.tokenizer = load_model_tokenizer(m.source, tokenizer);
  return m;
}

namespace {
// llama.cpp's imatrix: the FP model over calibration sequences, mean x^2 per input column of every layer.
std::map<std::string, torch::Tensor> compute_imatrix(LoadedLanguageModel& m, const GgufFileExport& e) {
  CalibSpec s;
  s.n = e.imatrix_samples;
  s.len = std::min<int64_t>(e.imatrix_seq_len, m.model->config().max_seq_len);
  s.seed = e.seed;
  s.range.first_paragraph = 0;
  s.range.last_paragraph = e.imatrix_paragraphs;
  torch::Tensor calib = calibration_samples(e.imatrix_data, m.tokenizer, s);
  torch::NoGradGuard ng;
  ImatrixCollector c;
  for (int64_t i = 0; i < calib.size(0); i += 16) m.model->forward(calib.slice(0, i, std::min(i + 16, calib.size(0))), c);
  return c.imatrix();
}
}  // namespace

GgufExportReport export_gguf_file(const GgufFileExport& e) {
  FQ_CHECK(fs::absolute(e.in) != fs::absolute(e.out), ConfigError, "--out \"", e.out, "\" is the input; choose another path");
  FQ_CHECK(e.quantizer == "flexquant" || e.quantizer == "llama.cpp", ConfigError, "--quantizer \"", e.quantizer,
           "\" -> allowed: flexquant | llama.cpp");
  FQ_CHECK(e.imatrix_data.empty() || e.quantizer == "llama.cpp", ConfigError,
           "--imatrix-data needs --quantizer llama.cpp (the importance-matrix rounding is llama.cpp's own)");
  LoadedLanguageModel m = load_language_model_any(e.in, e.tokenizer);
  GgufExportOptions o;
  o.name = fs::path(m.source).stem().string();
  o.exact_fallback = e.exact_fallback;
  o.llamacpp_quantizer = e.quantizer == "llama.cpp";
  if (e.type != "auto") o.type = parse_ggml_type(e.type);
  else if (!m.state.weights.empty()) o.type = gguf_type_for(m.state.weights.begin()->second.spec);
  if (!e.imatrix_data.empty()) o.imatrix = compute_imatrix(m, e);
  return export_gguf(*m.model, m.state, m.tokenizer, o, e.out);
}

}  // namespace flexquant
