// Loading any language-model file and exporting it (include/flexquant/export.h).
#include "flexquant/export.h"

#include <filesystem>

#include "flexquant/error.h"
#include "flexquant/libggml.h"
#include "flexquant/lm_eval.h"
#include "flexquant/onnx_model.h"
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

QdqExportReport export_onnx_file(const std::string& fqz, const std::string& out) {
  FQ_CHECK(has_ext(fqz, ".fqz"), ConfigError, "\"", fqz, "\" is not an .fqz -> QDQ ONNX is written from a model "
           "flexquant quantized from an .onnx (flexquant quantize --model M.onnx --out q.fqz, or --out q.onnx directly)");
  const QModelInfo info = read_qmodel_info(fqz);
  FQ_CHECK(info.arch == "onnx", ConfigError, "\"", fqz, "\" was quantized from a ", info.arch, " model (\"",
           info.source_model, "\"); QDQ ONNX is written from an ONNX source -> quantize the model's .onnx export");
  FQ_CHECK(fs::exists(info.source_model), IoError, "\"", fqz, "\" was quantized from \"", info.source_model,
           "\", which does not exist here -> put the source model back at that path");
  FQ_CHECK(file_hash(info.source_model) == info.source_hash, ModelError, "\"", info.source_model, "\" changed since \"",
           fqz, "\" was made from it (hash ", info.source_hash, ") -> restore the original model");
  auto model = OnnxModel::load(info.source_model);
  QuantState state;
  load_qmodel(fqz, *model, state);
  return export_qdq_onnx(info.source_model, *model, state, out);
}

}  // namespace flexquant
