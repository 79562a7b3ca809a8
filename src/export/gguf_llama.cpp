// Llama <-> GGUF (include/flexquant/gguf_llama.h).
#include <algorithm>
#include "flexquant/gguf_llama.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <filesystem>
#include <regex>

#include "flexquant/error.h"
#include "flexquant/libggml.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace {

// Adapter name pieces -> llama.cpp's (llama-arch.cpp LLM_TENSOR_NAMES for LLM_ARCH_LLAMA).
const std::map<std::string, std::string>& layer_names() {
  static const std::map<std::string, std::string> m = {
      {"attention.wq", "attn_q"},  {"attention.wk", "attn_k"},     {"attention.wv", "attn_v"},
      {"attention.wo", "attn_output"}, {"feed_forward.w1", "ffn_gate"}, {"feed_forward.w3", "ffn_up"},
      {"feed_forward.w2", "ffn_down"}, {"attention_norm", "attn_norm"}, {"ffn_norm", "ffn_norm"},
  };
  return m;
}

// llama.cpp's llama_ftype for a whole-file type (general.file_type).
uint32_t file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q4_1: return 3;
    case GgmlType::Q8_0: return 7;
    case GgmlType::Q5_0: return 8;
    case GgmlType::Q5_1: return 9;
    case GgmlType::Q2_K: return 10;
    case GgmlType::Q3_K: return 12;  // llama.cpp's names: Q3_K_M, Q4_K_M, Q5_K_M (its most used mixes)
    case GgmlType::Q4_K: return 15;
    case GgmlType::Q5_K: return 17;
    case GgmlType::Q6_K: return 18;
  }
  return 0;
}

// SentencePiece token types: 1 normal, 2 unknown, 3 control, 6 byte.
int32_t token_type(const Tokenizer& tok, int32_t id) {
  if (id == Tokenizer::kUnk) return 2;
  if (id == Tokenizer::kBos || id == Tokenizer::kEos) return 3;
  static const std::regex byte_piece("<0x[0-9A-F]{2}>");
  return std::regex_match(tok.piece(id), byte_piece) ? 6 : 1;
}

void set_metadata(GgufWriter& w, const LlamaConfig& c, const Tokenizer& tok, const GgufExportOptions& o) {
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("general.name", GgufValue::str(o.name));
  w.set("general.file_type", GgufValue::u32(file_type(o.type)));
  w.set("general.quantization_version", GgufValue::u32(2));
  w.set("general.alignment", GgufValue::u32(32));
  w.set("llama.context_length", GgufValue::u32(static_cast<uint32_t>(c.max_seq_len)));
  w.set("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(c.dim)));
  w.set("llama.block_count", GgufValue::u32(static_cast<uint32_t>(c.n_layers)));
  w.set("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(c.hidden_dim)));
  w.set("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(c.n_heads)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(c.n_kv_heads)));
  w.set("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(c.head_dim())));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(c.norm_eps)));
  w.set("llama.rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  w.set("llama.vocab_size", GgufValue::u32(static_cast<uint32_t>(c.vocab_size)));
  FQ_CHECK(tok.vocab_size() == c.vocab_size, ConfigError, "the tokenizer has ", tok.vocab_size(),
           " tokens but the model's vocabulary is ", c.vocab_size, " -> pass the model's own tokenizer");
  std::vector<GgufValue> tokens, scores, types;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    tokens.push_back(GgufValue::str(tok.spm_piece(id)));
    scores.push_back(GgufValue::f32(tok.score(id)));
    types.push_back(GgufValue::i32(token_type(tok, id)));
  }
  w.set("tokenizer.ggml.model", GgufValue::str("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::array(GgufKind::String, std::move(tokens)));
  w.set("tokenizer.ggml.scores", GgufValue::array(GgufKind::F32, std::move(scores)));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufKind::I32, std::move(types)));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(Tokenizer::kBos));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(Tokenizer::kEos));
  w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(Tokenizer::kUnk));
}

std::vector<int64_t> gguf_ne(const torch::Tensor& t) {
  auto s = t.sizes().vec();
  return std::vector<int64_t>(s.rbegin(), s.rend());
}

// FP values -> `type`: llama.cpp's reference rounding (our port), or its library with an importance matrix.
std::vector<uint8_t> quantize_fp(GgmlType type, const torch::Tensor& t, const GgufExportOptions& o,
                                 const QuantLayer* layer) {
  torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  const int64_t n = c.size(-1);
  const bool block = type != GgmlType::F32 && type != GgmlType::F16;
  if (!block || !o.llamacpp_quantizer) return ggml_quantize_ref(type, c.data_ptr<float>(), c.numel() / n, n);
  torch::Tensor im;
  if (layer) {
    auto it = o.imatrix.find(layer->name);
    if (it != o.imatrix.end()) im = it->second.to(torch::kCPU, torch::kFloat).contiguous();
  }
  FQ_CHECK(!im.defined() || im.numel() == n, ConfigError, "imatrix of \"", layer ? layer->name : "", "\" has ",
           im.defined() ? im.numel() : 0, " columns, the weight ", n);
  return LibGgml::get().quantize(type, c.data_ptr<float>(), c.numel() / n, n, im.defined() ? im.data_ptr<float>() : nullptr);
}

// One tensor: its type (fallback when rows do not fit the blocks) and bytes.
void add_tensor(GgufWriter& w, GgufExportReport& rep, const NamedTensor& nt, const QuantState& state,
                const GgufExportOptions& o) {
  const std::string name = gguf_tensor_name(nt.name);
  const torch::Tensor& value = *nt.tensor;
  const bool is_weight = nt.role == TensorRole::Weight;
  const QuantizedTensor* q = nullptr;
  if (is_weight && nt.layer) {
    auto it = state.weights.find(nt.layer->name);
    if (it != state.weights.end()) q = &it->second;
  }
  GgmlType type = GgmlType::F32;
  if (is_weight) type = o.type;
  if (nt.role == TensorRole::Embedding || nt.role == TensorRole::Classifier) type = o.embedding_type;
  if (auto ov = o.overrides.find(name); ov != o.overrides.end()) type = ov->second;
  std::string fp_source = o.llamacpp_quantizer ? "llama.cpp (libggml)" : "llama.cpp rtn";
  if (o.llamacpp_quantizer && nt.layer && o.imatrix.count(nt.layer->name)) fp_source += " + imatrix";
  GgufTensorReport tr{name, type, q ? "codes" : (type == GgmlType::F32 ? "fp" : fp_source), ""};
  const int64_t row = value.size(-1);
  if (row % ggml_type_info(type).block != 0) {
    const GgmlType fb = q && o.exact_fallback ? GgmlType::F32 : GgmlType::F16;
    tr.note = fmt::format("rows of {} do not fit {} blocks of {}: written as {}{}", row, ggml_type_info(type).name,
                          ggml_type_info(type).block, ggml_type_info(fb).name,
                          q && fb == GgmlType::F16 ? " (its quantized values rounded to f16)" : "");
    rep.warnings.push_back(name + ": " + tr.note);
    log_warn(fmt::format("GGUF export: {}: {}", name, tr.note));
    tr.type = type = fb;
  }
  std::vector<uint8_t> bytes;
  if (q && type != GgmlType::F32 && type != GgmlType::F16) {
    bytes = ggml_pack(type, *q, "layer \"" + nt.layer->name + "\"");
  } else {
    if (q) tr.source = "codes (dequantized)";
    bytes = quantize_fp(type, q ? q->dequantize() : value, o, q ? nullptr : nt.layer);
  }
  w.add_tensor(name, gguf_ne(value), type, std::move(bytes));
  rep.tensors.push_back(tr);
}

uint32_t meta_u32(const GgufFile& f, const std::string& key) {
  const GgufValue& v = f.at(key);
  FQ_CHECK(v.kind == GgufKind::U32 || v.kind == GgufKind::I32 || v.kind == GgufKind::U64 || v.kind == GgufKind::I64,
           IoError, "GGUF file \"", f.path, "\": metadata \"", key, "\" is not an integer");
  FQ_CHECK(v.i > 0, IoError, "GGUF file \"", f.path, "\": metadata \"", key, "\" is ", v.i, " -> must be > 0");
  return static_cast<uint32_t>(v.i);
}

}  // namespace

std::string gguf_tensor_name(const std::string& n) {
  static const std::map<std::string, std::string> top = {
      {"tok_embeddings.weight", "token_embd.weight"}, {"norm.weight", "output_norm.weight"}, {"output.weight", "output.weight"}};
  if (auto it = top.find(n); it != top.end()) return it->second;
  static const std::regex layer(R"(layers\.(\d+)\.(.+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(n, m, layer)) {
    auto it = layer_names().find(m[2]);
    if (it != layer_names().end()) return fmt::format("blk.{}.{}.{}", m[1].str(), it->second, m[3].str());
  }
  throw ConfigError("tensor \"" + n + "\" has no GGUF name -> the llama export knows tok_embeddings, norm, output and "
                    "layers.<i>.{attention.wq|wk|wv|wo, feed_forward.w1|w2|w3, attention_norm, ffn_norm}");
}

GgmlType gguf_type_for(const WeightQuantSpec& spec) {
  for (const GgmlTypeInfo& t : ggml_types())
    if (ggml_spec_mismatch(t.type, spec).empty()) return t.type;
  throw ConfigError(fmt::format(
      "the recipe's weight grid ({}, {}, group {}, {} scales) is not a GGUF block type -> for q4_0 / q5_0 / q8_0 "
      "use weight.bits=4|5|8 weight.symmetric=true weight.granularity=group weight.group_size=32 "
      "weight.scale_dtype=fp16 (recipes/llm-flexround-q4_0.json), and weight.symmetric=false for q4_1 / q5_1; for the k-quants weight.scale_dtype=kquant with "
      "bits 2/3/4/5/6, group_size 16/16/32/32/16, symmetric false/true/false/false/true (q2_k .. q6_k)",
      spec.format.name(), spec.symmetric ? "symmetric" : "asymmetric", spec.group_size, to_string(spec.scale_dtype)));
}

GgufExportReport export_gguf(ModelAdapter& adapter, const QuantState& state, const Tokenizer& tok,
                             const GgufExportOptions& opts, const std::string& path) {
  // The one model-specific step of export: GGUF's metadata is the llama hyper-parameters.
  auto* llama = dynamic_cast<LlamaModel*>(&adapter);
  FQ_CHECK(llama != nullptr, ConfigError, "GGUF export supports llama models; this model is \"", adapter.arch(),
           "\" -> hint: write a .fqz (or QDQ ONNX for CNNs) instead");
  LlamaModel& model = *llama;
  torch::NoGradGuard ng;
  GgufWriter w;
  set_metadata(w, model.config(), tok, opts);
  GgufExportReport rep;
  if (!state.acts.empty())
    rep.warnings.push_back("activation quantizers are not part of GGUF: llama.cpp quantizes activations itself "
                           "(8-bit per block inside its quantized matmuls)");
  for (const NamedTensor& nt : model.named_tensors()) add_tensor(w, rep, nt, state, opts);
  rep.bytes = w.write(path);
  return rep;
}

namespace {
// Values LlamaModel holds for `c` (every tensor); fits int64 after LlamaConfig::validate's maxima.
int64_t param_count(const LlamaConfig& c) {
  const int64_t per_layer = 2 * c.dim + 2 * c.dim * c.dim + 2 * c.kv_dim() * c.dim + 3 * c.hidden_dim * c.dim +
                            (c.qkv_bias ? c.dim + 2 * c.kv_dim() : 0);
  return c.vocab_size * c.dim * (c.tied_classifier ? 1 : 2) + c.n_layers * per_layer + c.dim;
}
}  // namespace

std::unique_ptr<LlamaModel> load_llama_gguf(const std::string& path) {
  GgufFile f = GgufFile::read(path);
  const std::string arch = f.has("general.architecture") ? f.at("general.architecture").s : "";
  FQ_CHECK(arch == "llama", ModelError, "GGUF file \"", path, "\" holds architecture \"", arch,
           "\" -> supported: llama");
  LlamaConfig c;
  c.dim = meta_u32(f, "llama.embedding_length");
  c.hidden_dim = meta_u32(f, "llama.feed_forward_length");
  c.n_layers = meta_u32(f, "llama.block_count");
  c.n_heads = meta_u32(f, "llama.attention.head_count");
  c.n_kv_heads = f.has("llama.attention.head_count_kv") ? meta_u32(f, "llama.attention.head_count_kv") : c.n_heads;
  c.max_seq_len = meta_u32(f, "llama.context_length");
  c.norm_eps = f.has("llama.attention.layer_norm_rms_epsilon") ? f.at("llama.attention.layer_norm_rms_epsilon").f : 1e-5;
  c.rope_theta = f.has("llama.rope.freq_base") ? f.at("llama.rope.freq_base").f : 10000.0;
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  FQ_CHECK(emb != nullptr && emb->ne.size() == 2, ModelError, "GGUF file \"", path, "\" has no 2-D token_embd.weight");
  c.vocab_size = emb->ne[1];
  c.tied_classifier = f.find_tensor("output.weight") == nullptr;
  c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  if (f.has("llama.rope.dimension_count"))
    FQ_CHECK(meta_u32(f, "llama.rope.dimension_count") == c.dim / c.n_heads, ModelError, "GGUF file \"", path,
             "\": partial rotary embeddings (rope.dimension_count ", meta_u32(f, "llama.rope.dimension_count"),
             " < head size ", c.dim / c.n_heads, ") are not supported");
  c.validate("\"" + path + "\"");
  // The metadata must not size memory on its own: the tensors in the file have to hold at least as many values.
  int64_t stored = 0;
  for (const auto& t : f.tensors) stored = std::min(stored + t.numel(), param_count(c));  // no overflow
  FQ_CHECK(stored >= param_count(c), ModelError, "GGUF file \"", path, "\": its metadata describes a model of ",
           param_count(c), " parameters but its tensors hold ", stored,
           " values -> hint: the metadata does not belong to these tensors (corrupt file)");
  auto model = std::make_unique<LlamaModel>(c);
  torch::NoGradGuard ng;
  for (const NamedTensor& nt : model->named_tensors()) {
    const std::string name = gguf_tensor_name(nt.name);
    torch::Tensor t = f.tensor(name);
    FQ_CHECK(t.sizes() == nt.tensor->sizes(), ModelError, "GGUF file \"", path, "\": tensor \"", name, "\" has shape ",
             t.sizes(), " but the metadata implies ", nt.tensor->sizes());
    nt.tensor->copy_(t);
  }
  model->source = path;
  return model;
}

namespace {
bool is_gguf(const std::string& path) { return std::filesystem::path(path).extension() == ".gguf"; }
}  // namespace

std::unique_ptr<LlamaModel> load_llama_any(const std::string& path) {
  return is_gguf(path) ? load_llama_gguf(path) : load_language_model(path);
}

Tokenizer load_model_tokenizer(const std::string& model_path, const std::string& tokenizer) {
  namespace fs = std::filesystem;
  if (!tokenizer.empty()) {
    FQ_CHECK(fs::exists(tokenizer), IoError, "tokenizer \"", tokenizer, "\" does not exist -> pass --tokenizer ",
             "<tokenizer.json | *.model | tok512.bin>");
    return Tokenizer::load(tokenizer);
  }
  if (is_gguf(model_path)) return load_gguf_tokenizer(model_path);
  const fs::path dir = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tok512.bin"})
    if (fs::exists(dir / name)) return Tokenizer::load((dir / name).string());
  throw IoError(detail::concat("no tokenizer beside model \"", model_path, "\": looked for tokenizer.json, ",
                               "tokenizer.model and tok512.bin in ", dir.string(), " -> pass --tokenizer <file>"));
}

Tokenizer load_gguf_tokenizer(const std::string& path) {
  GgufFile f = GgufFile::read(path);
  FQ_CHECK(f.has("tokenizer.ggml.model") && f.at("tokenizer.ggml.model").s == "llama", ModelError, "GGUF file \"",
           path, "\" has no SentencePiece (\"llama\") tokenizer -> supported: tokenizer.ggml.model = llama");
  const auto& toks = f.at("tokenizer.ggml.tokens");
  const auto& scores = f.at("tokenizer.ggml.scores");
  FQ_CHECK(toks.items.size() == scores.items.size(), IoError, "GGUF file \"", path,
           "\": tokenizer.ggml.tokens and tokenizer.ggml.scores differ in length");
  std::vector<std::string> pieces;
  std::vector<float> sc;
  for (size_t i = 0; i < toks.items.size(); ++i) {
    pieces.push_back(toks.items[i].s);
    sc.push_back(static_cast<float>(scores.items[i].f));
  }
  return Tokenizer::from_spm_pieces(pieces, std::move(sc), path);
}

}  // namespace flexquant
