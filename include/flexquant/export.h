// Exports as library calls (`flexquant export` is a thin layer over these): load what a user has (an .fqz, a
// GGUF, an FP checkpoint) and write it in a runtime's format.
#pragma once
#include <memory>
#include <string>

#include "flexquant/gguf_llama.h"
#include "flexquant/llama.h"
#include "flexquant/onnx_export.h"
#include "flexquant/reconstruct.h"
#include "flexquant/tokenizer.h"

namespace flexquant {

/// A language model with its quantized state (empty for an FP model) and tokenizer.
struct LoadedLanguageModel {
  std::unique_ptr<LlamaModel> model;
  QuantState state;
  Tokenizer tokenizer;
  std::string source;  ///< the FP checkpoint the weights came from
};

/// From an .fqz (the source model it records, then its stored weights and activation grids), a .gguf, a
/// llama2.c .bin or a Hugging Face folder. `tokenizer` "" = the GGUF's own, else tok512.bin beside the source.
LoadedLanguageModel load_language_model_any(const std::string& path, const std::string& tokenizer = "");

/// What `flexquant export --to gguf` does.
struct GgufFileExport {
  std::string in;                ///< any file load_language_model_any reads
  std::string out;               ///< .gguf
  std::string tokenizer;         ///< "" = the source's own (see load_language_model_any)
  std::string type = "auto";     ///< "auto": the .fqz's grid (gguf_type_for), q8_0 for an FP model; or a type name
  bool exact_fallback = false;   ///< GgufExportOptions::exact_fallback
  std::string quantizer = "flexquant";  ///< FP layers: "flexquant" (reference port) | "llama.cpp" (its library)
  /// Importance matrices from this text (llama.cpp's imatrix: per-column mean of squared inputs of every
  /// layer over calibration sequences drawn as flexquant's calibration is); needs quantizer "llama.cpp".
  std::string imatrix_data;
  int64_t imatrix_samples = 512, imatrix_seq_len = 256, imatrix_paragraphs = 2000;
  uint64_t seed = 1005;
};
GgufExportReport export_gguf_file(const GgufFileExport& e);

/// What `flexquant export --to onnx` does: an .fqz quantized from an .onnx, written as QDQ ONNX (export_qdq_onnx)
/// from the source model it records (checked by hash).
QdqExportReport export_onnx_file(const std::string& fqz, const std::string& out);

}  // namespace flexquant
