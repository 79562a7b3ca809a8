// Llama models to and from GGUF, the files llama.cpp runs (architecture "llama", tokenizer model "llama").
//
// Export writes every tensor the adapter lists (ModelAdapter::named_tensors) under llama.cpp's names
// (token_embd, blk.<i>.attn_{norm,q,k,v,output}, blk.<i>.ffn_{norm,gate,up,down}, output_norm, output), the
// architecture metadata and the tokenizer. A layer flexquant quantized is written from its codes (ggml_pack:
// the file dequantizes bit for bit to the weights flexquant evaluated); a layer left in FP is rounded by
// llama.cpp's own reference quantizer (ggml_quantize_ref). Rows that do not fit the type's blocks fall back to
// f16 as llama.cpp does, with a warning; for a quantized layer that rounds its dequantized values once more
// (relative error <= 2^-11), unless exact_fallback asks for f32.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flexquant/gguf.h"
#include "flexquant/llama.h"
#include "flexquant/reconstruct.h"
#include "flexquant/tokenizer.h"

namespace flexquant {

struct GgufExportOptions {
  GgmlType type = GgmlType::Q8_0;           ///< the quantizable layers (attention and FFN weights)
  GgmlType embedding_type = GgmlType::F32;  ///< token_embd (and an untied output), which flexquant keeps in FP
  std::map<std::string, GgmlType> overrides;  ///< by GGUF tensor name, e.g. {"blk.0.ffn_down.weight", Q8_0}
  std::string name = "flexquant";           ///< general.name
  /// Rows that fit no block of `type`: f16 (llama.cpp's choice, equal file size) or, when true, f32 for layers
  /// flexquant quantized, so that the file holds exactly the evaluated weights.
  bool exact_fallback = false;
  /// Layers left in FP are rounded by llama.cpp's own quantizer in its library (LibGgml) instead of the reference
  /// port; needed for importance matrices.
  bool llamacpp_quantizer = false;
  /// Per-layer importance (adapter layer name -> [in] mean of squared inputs) for llama.cpp's quantizer.
  std::map<std::string, torch::Tensor> imatrix;
};

struct GgufTensorReport {
  std::string name;     ///< GGUF name
  GgmlType type;
  std::string source;   ///< "codes" (flexquant's), "llama.cpp rtn", "fp"
  std::string note;     ///< why a fallback type was used, if one was
};

struct GgufExportReport {
  std::vector<GgufTensorReport> tensors;
  int64_t bytes = 0;
  std::vector<std::string> warnings;
};

/// llama.cpp's name of an adapter tensor name ("layers.3.attention.wq.weight" -> "blk.3.attn_q.weight");
/// ConfigError for a name it has no mapping for.
std::string gguf_tensor_name(const std::string& adapter_name);

/// Writes `model` (with the quantized weights of `state`, if any) and `tok` as GGUF v3 at `path`. The model
/// must be a llama (ConfigError naming its architecture otherwise).
GgufExportReport export_gguf(ModelAdapter& model, const QuantState& state, const Tokenizer& tok,
                             const GgufExportOptions& opts, const std::string& path);

/// The GGUF type whose grid is exactly `spec` (Q4_0, Q5_0, Q8_0 for uint4/5/8 symmetric, per group of 32,
/// fp16 scales); ConfigError saying which recipe settings are missing otherwise.
GgmlType gguf_type_for(const WeightQuantSpec& spec);

/// Reads a llama GGUF (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 tensors, dequantized to fp32) as a LlamaModel.
/// IoError / ModelError naming the file and the field for anything missing, unsupported or mis-shaped (another
/// architecture: the error lists the supported one).
std::unique_ptr<LlamaModel> load_llama_gguf(const std::string& path);
/// The tokenizer stored in a GGUF file (tokenizer.ggml.model "llama": tokens, scores).
Tokenizer load_gguf_tokenizer(const std::string& path);

/// Any language-model file flexquant reads: a .gguf (load_llama_gguf), a llama2.c .bin or a Hugging Face folder
/// (load_language_model).
std::unique_ptr<LlamaModel> load_llama_any(const std::string& path);
/// The tokenizer for a model file: `tokenizer` when given, else a GGUF's own, else the first of tokenizer.json,
/// tokenizer.model and tok512.bin in the model's folder (an HF folder) or beside the model file. IoError naming
/// where it looked and the --tokenizer flag.
Tokenizer load_model_tokenizer(const std::string& model_path, const std::string& tokenizer = "");

}  // namespace flexquant
