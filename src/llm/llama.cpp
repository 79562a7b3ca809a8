// Llama-family forward (Touvron et al. 2023; Meta's model.py / Karpathy's llama2.c run.c) as a ModelAdapter.
// Batched, causal, no KV cache: every call recomputes positions 0..T-1, which is what evaluation and block
// reconstruction need. RoPE rotates adjacent pairs (Su et al. 2021, eq. 34 in the interleaved form of Meta's
// reference code); GQA maps query head h to key/value head h / (n_heads / n_kv_heads) like run.c.
#include "flexquant/llama.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>

#include <cmath>

#include "flexquant/attention.h"
#include "flexquant/error.h"
#include "flexquant/llama_ops.h"

namespace flexquant {

void LlamaConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* what) {
    FQ_CHECK(v > 0, ModelError, source, ": ", what, " -> ", v, " -> must be > 0; hint: is this a Llama-family model?");
  };
  positive(dim, "dim");
  positive(hidden_dim, "hidden_dim");
  positive(n_layers, "n_layers");
  positive(n_heads, "n_heads");
  positive(n_kv_heads, "n_kv_heads");
  positive(vocab_size, "vocab_size");
  positive(max_seq_len, "max_seq_len");
  // Sane maxima, far above any released model, so that a corrupt header is refused before anything is allocated
  // from it and every size product of these fields fits int64.
  auto at_most = [&](int64_t v, int64_t max, const char* what) {
    FQ_CHECK(v <= max, ModelError, source, ": ", what, " -> ", v, " -> allowed at most ", max,
             " (far above any released model); hint: the file is corrupt or not a Llama-family checkpoint");
  };
  at_most(dim, int64_t{1} << 20, "dim");
  at_most(hidden_dim, int64_t{1} << 20, "hidden_dim");
  at_most(n_layers, 4096, "n_layers");
  at_most(vocab_size, int64_t{1} << 24, "vocab_size");
  at_most(max_seq_len, int64_t{1} << 30, "max_seq_len");
  FQ_CHECK(dim % n_heads == 0, ModelError, source, ": dim ", dim, " is not a multiple of n_heads ", n_heads,
           " -> allowed: dim = n_heads * head_dim");
  FQ_CHECK(head_dim() % 2 == 0, ModelError, source, ": head_dim ", head_dim(), " is odd -> RoPE needs an even head_dim");
  FQ_CHECK(n_heads % n_kv_heads == 0, ModelError, source, ": n_heads ", n_heads, " is not a multiple of n_kv_heads ",
           n_kv_heads, " -> allowed: grouped-query attention with whole groups");
  FQ_CHECK(norm_eps > 0 && norm_eps < 1, ModelError, source, ": norm_eps ", norm_eps, " -> allowed (0, 1)");
  FQ_CHECK(rope_theta > 0, ModelError, source, ": rope_theta ", rope_theta, " -> must be > 0");
}

LlamaDecoderLayer::LlamaDecoderLayer(int index, const LlamaConfig& cfg)
    : name_("layers." + std::to_string(index)), cfg_(cfg) {
  const std::string p = name_ + ".";
  auto lin = [&](const std::string& n, int64_t out, int64_t in, bool bias) {
    QuantLayer l;
    l.name = p + n;
    l.kind = LayerKind::Linear;
    l.weight = torch::zeros({out, in});
    if (bias) l.bias = torch::zeros({out});
    return l;
  };
  const int64_t D = cfg.dim, H = cfg.hidden_dim, KV = cfg.kv_dim();
  layers_ = {lin("attention.wq", D, D, cfg.qkv_bias),     lin("attention.wk", KV, D, cfg.qkv_bias),
             lin("attention.wv", KV, D, cfg.qkv_bias),     lin("attention.wo", D, D, false),
             lin("feed_forward.w1", H, D, false),          lin("feed_forward.w3", H, D, false),
             lin("feed_forward.w2", D, H, false)};
  sites_ = {{"attn_in", false}, {"k", false, SiteRole::KvCache}, {"v", false, SiteRole::KvCache},
            {"attn_out", false}, {"ffn_in", false}, {"ffn_mid", false}};
  attention_norm_ = torch::ones({D});
  ffn_norm_ = torch::ones({D});
}

torch::Tensor LlamaDecoderLayer::forward(const torch::Tensor& x, UnitContext& ctx) {
  FQ_CHECK(x.dim() == 3 && x.size(2) == cfg_.dim, ModelError, name_, ": input shape ", x.sizes(),
           " -> expected [B, T, ", cfg_.dim, "]");
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t nh = cfg_.n_heads, nkv = cfg_.n_kv_heads, hd = cfg_.head_dim();

  // --- attention
  torch::Tensor h = ctx.act(sites_[AttnIn], AttnIn, rms_norm(x, attention_norm_, cfg_.norm_eps));
  torch::Tensor q = ctx.run(layers_[Wq], Wq, h);
  torch::Tensor k = ctx.act(sites_[K], K, ctx.run(layers_[Wk], Wk, h));
  torch::Tensor v = ctx.act(sites_[V], V, ctx.run(layers_[Wv], Wv, h));
  q = rotary_embedding(q.view({B, T, nh, hd}), cfg_.rope_theta).transpose(1, 2);   // [B,nh,T,hd]
  k = rotary_embedding(k.view({B, T, nkv, hd}), cfg_.rope_theta).transpose(1, 2);  // [B,nkv,T,hd]
  v = v.view({B, T, nkv, hd}).transpose(1, 2);
  torch::Tensor att = causal_attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(hd)));  // [B,nh,T,hd]
  att = att.transpose(1, 2).reshape({B, T, nh * hd});
  att = ctx.act(sites_[AttnOut], AttnOut, att);
  torch::Tensor y = x + ctx.run(layers_[Wo], Wo, att);

  // --- SwiGLU feed-forward
  torch::Tensor f = ctx.act(sites_[FfnIn], FfnIn, rms_norm(y, ffn_norm_, cfg_.norm_eps));
  torch::Tensor gate = ctx.run(layers_[W1], W1, f);
  torch::Tensor up = ctx.run(layers_[W3], W3, f);
  torch::Tensor mid = ctx.act(sites_[FfnMid], FfnMid, swiglu(gate, up));
  return y + ctx.run(layers_[W2], W2, mid);
}

void LlamaDecoderLayer::to(torch::Device device) {
  for (QuantLayer& l : layers_) l.to(device);
  attention_norm_ = attention_norm_.to(device);
  ffn_norm_ = ffn_norm_.to(device);
}

LlamaModel::LlamaModel(const LlamaConfig& cfg) : cfg_(cfg) {
  cfg_.validate("LlamaModel");
  tok_embeddings_ = torch::zeros({cfg.vocab_size, cfg.dim});
  norm_ = torch::ones({cfg.dim});
  if (!cfg.tied_classifier) classifier_ = torch::zeros({cfg.vocab_size, cfg.dim});
  for (int i = 0; i < cfg.n_layers; ++i) layers_.push_back(std::make_unique<LlamaDecoderLayer>(i, cfg));
}

torch::Tensor LlamaModel::prologue(const torch::Tensor& tokens) {
  FQ_CHECK(tokens.dim() == 2, ModelError, "llama input shape ", tokens.sizes(), " -> expected token ids [B, T]");
  FQ_CHECK(tokens.scalar_type() == torch::kLong, ModelError, "llama input dtype ", tokens.scalar_type(),
           " -> expected int64 token ids");
  FQ_CHECK(tokens.size(1) >= 1 && tokens.size(1) <= cfg_.max_seq_len, ModelError, "sequence length ", tokens.size(1),
           " -> allowed 1..", cfg_.max_seq_len, " (the model's max_seq_len); hint: evaluate in windows");
  if (tokens.numel() > 0) {
    int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    FQ_CHECK(lo >= 0 && hi < cfg_.vocab_size, ModelError, "token id out of range -> [", lo, ", ", hi,
             "] -> allowed [0, ", cfg_.vocab_size, "); hint: tokenizer and model do not match");
  }
  return tok_embeddings_.index_select(0, tokens.reshape({-1})).view({tokens.size(0), tokens.size(1), cfg_.dim});
}

torch::Tensor LlamaModel::epilogue(const torch::Tensor& x) {
  return torch::nn::functional::linear(rms_norm(x, norm_, cfg_.norm_eps), classifier());
}

std::vector<Unit*> LlamaModel::units() {
  std::vector<Unit*> out;
  for (auto& l : layers_) out.push_back(l.get());
  return out;
}

std::vector<NormFeed> LlamaModel::norm_feeds() {
  using L = LlamaDecoderLayer;
  std::vector<NormFeed> out;
  for (auto& layer : layers_) {
    auto& ls = layer->layers();
    out.push_back({layer->name() + ".attention_norm", &layer->attention_norm(), {&ls[L::Wq], &ls[L::Wk], &ls[L::Wv]}});
    out.push_back({layer->name() + ".ffn_norm", &layer->ffn_norm(), {&ls[L::W1], &ls[L::W3]}});
  }
  return out;
}

std::vector<NamedTensor> LlamaModel::named_tensors() {
  std::vector<NamedTensor> out{{"tok_embeddings.weight", TensorRole::Embedding, &tok_embeddings_, nullptr}};
  for (auto& layer : layers_) {
    out.push_back({layer->name() + ".attention_norm.weight", TensorRole::Norm, &layer->attention_norm(), nullptr});
    out.push_back({layer->name() + ".ffn_norm.weight", TensorRole::Norm, &layer->ffn_norm(), nullptr});
    for (QuantLayer& l : layer->layers()) {
      out.push_back({l.name + ".weight", TensorRole::Weight, &l.weight, &l});
      if (l.bias.defined()) out.push_back({l.name + ".bias", TensorRole::Bias, &l.bias, &l});
    }
  }
  out.push_back({"norm.weight", TensorRole::Norm, &norm_, nullptr});
  if (!cfg_.tied_classifier) out.push_back({"output.weight", TensorRole::Classifier, &classifier_, nullptr});
  return out;
}

void LlamaModel::to(torch::Device device) {
  tok_embeddings_ = tok_embeddings_.to(device);
  norm_ = norm_.to(device);
  if (classifier_.defined()) classifier_ = classifier_.to(device);
  for (auto& l : layers_) l->to(device);
}

}  // namespace flexquant
