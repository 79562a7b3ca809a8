// Llama-family decoder-only transformer (Llama 1/2/3, Mistral, Qwen2 dense) as a ModelAdapter.
//
//   prologue : token embedding, int64 [B,T] -> fp32 [B,T,D]
//   units    : decoder layers "layers.<i>"  (RMSNorm -> GQA attention with RoPE -> residual ->
//              RMSNorm -> SwiGLU w2(silu(w1 x) * w3 x) -> residual)
//   epilogue : final RMSNorm + classifier (kept in FP), [B,T,D] -> logits [B,T,V]
//
// Naming convention (Meta / llama2.c names, not HF): the 7 QuantLayers of unit i, in forward order, are
//   layers.<i>.attention.{wq,wk,wv,wo}, layers.<i>.feed_forward.{w1,w3,w2}
// (HF: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj). Activation sites of each unit, in order:
//   0 "attn_in"  normed input shared by wq, wk, wv     3 "attn_out" input of wo
//   1 "k"        output of wk (before RoPE)            4 "ffn_in"   normed input shared by w1, w3
//   2 "v"        output of wv                          5 "ffn_mid"  silu(w1 x) * w3 x, input of w2
//
// RoPE convention: rotation of ADJACENT pairs (x[2j], x[2j+1]) as Meta's reference code and llama2.c do.
// Hugging Face checkpoints store wq/wk rows permuted for the rotate-half convention; the HF loader undoes
// that permutation (and the writer applies it), exactly as HF's convert_llama_weights_to_hf.py, so both
// layouts give identical logits. Weights are fp32 [out, in] in memory whatever the file's dtype.
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "flexquant/adapter.h"

namespace flexquant {

/// Hyper-parameters of a Llama-family model.
struct LlamaConfig {
  int64_t dim = 0;            ///< model width D (> 0)
  int64_t hidden_dim = 0;     ///< SwiGLU width (> 0)
  int64_t n_layers = 0;       ///< decoder layers (> 0)
  int64_t n_heads = 0;        ///< query heads; dim % n_heads == 0
  int64_t n_kv_heads = 0;     ///< key/value heads (GQA); n_heads % n_kv_heads == 0
  int64_t vocab_size = 0;     ///< > 0
  int64_t max_seq_len = 0;    ///< context length the model was trained with (> 0); longer inputs are refused
  double norm_eps = 1e-5;     ///< RMSNorm epsilon (llama2.c: 1e-5; HF: rms_norm_eps)
  double rope_theta = 10000;  ///< RoPE base (HF: rope_theta)
  bool tied_classifier = true;  ///< classifier shares the token embedding
  bool qkv_bias = false;      ///< wq/wk/wv carry biases (Qwen2)

  int64_t head_dim() const { return dim / n_heads; }
  int64_t kv_dim() const { return head_dim() * n_kv_heads; }
  /// Throws ModelError naming the offending field when the shapes are inconsistent.
  void validate(const std::string& source) const;
};

/// One decoder layer as a reconstruction unit. layers() = {wq, wk, wv, wo, w1, w3, w2}.
class LlamaDecoderLayer : public Unit {
 public:
  enum LayerIndex { Wq = 0, Wk, Wv, Wo, W1, W3, W2 };
  enum SiteIndex { AttnIn = 0, K, V, AttnOut, FfnIn, FfnMid };

  LlamaDecoderLayer(int index, const LlamaConfig& cfg);
  std::string name() const override { return name_; }
  std::vector<QuantLayer>& layers() override { return layers_; }
  const std::vector<ActSite>& act_sites() const override { return sites_; }
  /// x: [B,T,D] -> [B,T,D]; causal, positions 0..T-1.
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override;
  /// One sequence per shard at the recipes' batch of 4: a layer of stories260K (dim 64) is ~150 small ops
  /// whose per-op cost threads cannot split; measured 1.6x faster per step at 2 threads than 1 shard.
  int64_t step_shards() const override { return 4; }

  /// RMSNorm gains [D] before attention / before the FFN. Mutable: SmoothQuant divides them by its
  /// per-channel scales (and multiplies the following wq/wk/wv or w1/w3 input columns).
  torch::Tensor& attention_norm() { return attention_norm_; }
  torch::Tensor& ffn_norm() { return ffn_norm_; }
  void to(torch::Device device);

 private:
  std::string name_;
  LlamaConfig cfg_;
  std::vector<QuantLayer> layers_;
  std::vector<ActSite> sites_;
  torch::Tensor attention_norm_, ffn_norm_;
};

/// The whole model. Build with load_language_model() (or fill the tensors of a default-initialised one).
class LlamaModel : public ModelAdapter {
 public:
  /// All tensors zero-initialised with the config's shapes (loaders then copy into them).
  explicit LlamaModel(const LlamaConfig& cfg);
  std::string arch() const override { return "llama"; }
  /// tokens int64 [B,T] (T <= max_seq_len, ids in [0, vocab)) -> [B,T,D]
  torch::Tensor prologue(const torch::Tensor& tokens) override;
  /// [B,T,D] -> logits [B,T,V]
  torch::Tensor epilogue(const torch::Tensor& x) override;
  std::vector<Unit*> units() override;
  void to(torch::Device device) override;
  /// attention_norm -> wq/wk/wv and ffn_norm -> w1/w3 of every layer (wo and w2 follow no norm).
  std::vector<NormFeed> norm_feeds() override;
  /// tok_embeddings, every layer's norms and linears, the final norm, and an untied classifier.
  std::vector<NamedTensor> named_tensors() override;

  const LlamaConfig& config() const { return cfg_; }
  LlamaDecoderLayer& layer(int i) { return *layers_.at(i); }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  torch::Tensor& tok_embeddings() { return tok_embeddings_; }  ///< [V,D]
  torch::Tensor& final_norm() { return norm_; }                ///< [D]
  /// [V,D]; the same tensor as tok_embeddings() when the classifier is tied.
  torch::Tensor& classifier() { return cfg_.tied_classifier ? tok_embeddings_ : classifier_; }
  /// Where the weights came from (file path), for logs and metadata.
  std::string source;

 private:
  LlamaConfig cfg_;
  torch::Tensor tok_embeddings_, norm_, classifier_;
  std::vector<std::unique_ptr<LlamaDecoderLayer>> layers_;
};

/// llama2.c "version 0" checkpoint (header of 7 int32, fp32 arrays; negative vocab = untied classifier).
/// Throws IoError on a missing/truncated/oversized file, naming the file and expected vs actual size.
std::unique_ptr<LlamaModel> load_llama2c(const std::string& path);

/// Hugging Face layout: `dir/config.json` + `dir/model.safetensors`, or shards listed in
/// `dir/model.safetensors.index.json` (or every `*.safetensors` in dir). model_type llama / mistral / qwen2.
/// Throws IoError for missing files and ModelError for a missing or mis-shaped tensor.
std::unique_ptr<LlamaModel> load_llama_hf(const std::string& dir);

/// Writes `dir/config.json` + `dir/model.safetensors` (fp32, HF names, wq/wk permuted to rotate-half).
/// Creates dir. The result loads back with load_llama_hf and gives identical logits.
void save_llama_hf(LlamaModel& model, const std::string& dir);

/// Picks the loader by path: a regular file -> llama2.c .bin; a directory -> Hugging Face layout.
std::unique_ptr<LlamaModel> load_language_model(const std::string& path);

}  // namespace flexquant
