// Exports as library calls (`flexquant export` is a thin layer over these): load what a user has (an .fqz, a
// GGUF, an FP checkpoint) and write it in a runtime's format.
#pragma once
#include <memory>
#include <string>

#include "flexquant/gguf_llama.h"
#include "flexquant/llama.h"
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

/// Writes `in` (any of the above) as GGUF. `type` "auto" = the type whose grid the .fqz's layers are on
/// (gguf_type_for), q8_0 for an FP model; otherwise a type name (ggml_types()).
GgufExportReport export_gguf_file(const std::string& in, const std::string& tokenizer, const std::string& type,
                                  const std::string& out, bool exact_fallback = false);

}  // namespace flexquant
