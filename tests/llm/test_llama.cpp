// Llama forward and loaders on the real stories260K weights: the adapter's logits against an independent
// scalar reference (tests/llm/reference_llama.h) and against a Hugging Face-convention (rotate-half) torch
// forward written here from HF tensor names; HF-layout round trip; loader errors; UnitContext hooks.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "flexquant/error.h"
#include "flexquant/llama.h"
#include "flexquant/safetensors.h"
#include "reference_llama.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;

namespace {

std::string model_path() { return flexquant::testing::shared_path("data/lm/stories260K.bin"); }

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("fq_llm_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Fixed inputs: 2 sequences x 48 tokens, seeded ids spread over the whole vocabulary (BOS first).
torch::Tensor fixed_tokens(int64_t B = 2, int64_t T = 48, int64_t V = 512) {
  std::mt19937 rng(1234);
  torch::Tensor t = torch::empty({B, T}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    t[b][0] = 1;
    for (int64_t i = 1; i < T; ++i) t[b][i] = static_cast<int64_t>(rng() % V);
  }
  return t;
}

torch::Tensor reference_logits(const reference::RefLlama& ref, const torch::Tensor& tokens) {
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    std::vector<int> ids;
    for (int64_t i = 0; i < tokens.size(1); ++i) ids.push_back(static_cast<int>(tokens[b][i].item<int64_t>()));
    std::vector<float> out = ref.forward(ids);
    rows.push_back(torch::from_blob(out.data(), {tokens.size(1), ref.vocab}).clone());
  }
  return torch::stack(rows);
}

// Hugging Face LlamaForCausalLM forward (rotate-half RoPE) from HF-named tensors, written from the HF
// modeling_llama.py equations, independent of src/llm.
torch::Tensor hf_convention_logits(const std::map<std::string, torch::Tensor>& t, const torch::Tensor& tokens, int64_t L,
                                   int64_t nh, int64_t nkv, bool tied, double eps = 1e-5) {
  auto w = [&](const std::string& n) { return t.at(n); };
  auto has = [&](const std::string& n) { return t.count(n) != 0; };
  auto rms = [&](torch::Tensor x, torch::Tensor g) { return g * (x * torch::rsqrt(x.pow(2).mean(-1, true) + eps)); };
  auto lin = [&](torch::Tensor x, const std::string& p) {
    torch::Tensor y = torch::matmul(x, w(p + ".weight").t());
    return has(p + ".bias") ? y + w(p + ".bias") : y;
  };
  auto rotate_half = [](torch::Tensor x) {
    int64_t h = x.size(-1) / 2;
    return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
  };
  const int64_t B = tokens.size(0), T = tokens.size(1);
  torch::Tensor x = w("model.embed_tokens.weight").index({tokens});
  const int64_t D = x.size(-1), hd = D / nh;
  torch::Tensor inv = 1.0 / torch::pow(10000.0, torch::arange(0, hd, 2, torch::kFloat64) / double(hd));
  torch::Tensor fr = torch::outer(torch::arange(T, torch::kFloat64), inv);
  torch::Tensor emb = torch::cat({fr, fr}, -1);
  torch::Tensor cos = emb.cos().to(torch::kFloat32), sin = emb.sin().to(torch::kFloat32);  // [T, hd]
  torch::Tensor mask = torch::full({T, T}, -INFINITY).triu(1);
  for (int64_t l = 0; l < L; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    torch::Tensor h = rms(x, w(p + "input_layernorm.weight"));
    torch::Tensor q = lin(h, p + "self_attn.q_proj").view({B, T, nh, hd}).transpose(1, 2);
    torch::Tensor k = lin(h, p + "self_attn.k_proj").view({B, T, nkv, hd}).transpose(1, 2);
    torch::Tensor v = lin(h, p + "self_attn.v_proj").view({B, T, nkv, hd}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    k = k.unsqueeze(2).expand({B, nkv, nh / nkv, T, hd}).reshape({B, nh, T, hd});  // repeat_kv
    v = v.unsqueeze(2).expand({B, nkv, nh / nkv, T, hd}).reshape({B, nh, T, hd});
    torch::Tensor a = torch::softmax(torch::matmul(q, k.transpose(2, 3)) / std::sqrt(double(hd)) + mask, -1);
    torch::Tensor o = torch::matmul(a, v).transpose(1, 2).reshape({B, T, D});
    x = x + lin(o, p + "self_attn.o_proj");
    h = rms(x, w(p + "post_attention_layernorm.weight"));
    x = x + lin(torch::silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj");
  }
  x = rms(x, w("model.norm.weight"));
  return torch::matmul(x, (tied ? w("model.embed_tokens.weight") : w("lm_head.weight")).t());
}

// Records every hook the engine would see.
struct RecordingContext : UnitContext {
  std::vector<std::string> events;
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) override {
    events.push_back("run " + std::to_string(i) + " " + layer.name);
  }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    events.push_back("act " + std::to_string(j) + " " + site.name);
    return x;
  }
};

template <typename Fn>
std::string error_message(Fn fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(LlamaForward, MatchesScalarReferenceOnFixedInputs) {
  auto model = load_llama2c(model_path());
  reference::RefLlama ref(model_path());
  torch::Tensor tokens = fixed_tokens();
  torch::NoGradGuard ng;
  torch::Tensor ours = model->forward(tokens);
  torch::Tensor theirs = reference_logits(ref, tokens);
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  double maxdiff = (ours - theirs).abs().max().item<double>();
  EXPECT_LT(maxdiff, 1e-4) << "max |logit diff| over " << ours.numel() << " logits";
  EXPECT_EQ(ours.numel(), 2 * 48 * 512);
  // the logits are not trivially small: the comparison means something
  EXPECT_GT(theirs.abs().max().item<double>(), 1.0);
}

TEST(LlamaForward, UntiedClassifierBinMatchesReference) {
  // A real untied checkpoint: stories260K with header vocab = -512 and wcls = 0.5 * emb + 0.01 appended.
  std::ifstream f(model_path(), std::ios::binary);
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  int32_t v = -512;
  std::memcpy(buf.data() + 5 * 4, &v, 4);
  std::vector<float> wcls(512 * 64);
  const float* emb = reinterpret_cast<const float*>(buf.data() + 28);
  for (size_t i = 0; i < wcls.size(); ++i) wcls[i] = 0.5f * emb[i] + 0.01f;
  buf.insert(buf.end(), reinterpret_cast<char*>(wcls.data()), reinterpret_cast<char*>(wcls.data() + wcls.size()));
  fs::path dir = temp_dir("untied");
  std::string p = (dir / "untied.bin").string();
  std::ofstream(p, std::ios::binary).write(buf.data(), static_cast<std::streamsize>(buf.size()));

  auto model = load_llama2c(p);
  EXPECT_FALSE(model->config().tied_classifier);
  reference::RefLlama ref(p);
  torch::Tensor tokens = fixed_tokens(1, 20);
  torch::NoGradGuard ng;
  torch::Tensor ours = model->forward(tokens);
  EXPECT_LT((ours - reference_logits(ref, tokens)).abs().max().item<double>(), 1e-4);
  // and it differs from the tied model, so the classifier really was used
  auto tied = load_llama2c(model_path());
  EXPECT_GT((ours - tied->forward(tokens)).abs().max().item<double>(), 0.1);

  // HF round trip of the untied model keeps lm_head
  save_llama_hf(*model, (dir / "hf").string());
  EXPECT_TRUE(load_safetensors((dir / "hf" / "model.safetensors").string()).contains("lm_head.weight"));
  EXPECT_TRUE(torch::equal(load_llama_hf((dir / "hf").string())->forward(tokens), ours));
  fs::remove_all(dir);
}

TEST(LlamaAdapter, StructureNamesAndHookOrder) {
  auto model = load_llama2c(model_path());
  const LlamaConfig& c = model->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_classifier);
  EXPECT_EQ(model->arch(), "llama");
  auto units = model->units();
  ASSERT_EQ(units.size(), 5u);
  EXPECT_EQ(model->all_layers().size(), 35u);
  // Keys and values are the KV-cache sites (act.kv_bits); no layer is an Input/Output edge layer (the
  // embedding and the classifier are not quantized layers).
  for (Unit* u : units)
    for (const ActSite& s : u->act_sites())
      EXPECT_EQ(s.role, s.name == "k" || s.name == "v" ? SiteRole::KvCache : SiteRole::Activation) << s.name;
  for (QuantLayer* l : model->all_layers()) EXPECT_EQ(l->role, LayerRole::Hidden) << l->name;
  const std::vector<std::string> names = {"attention.wq", "attention.wk", "attention.wv", "attention.wo",
                                          "feed_forward.w1", "feed_forward.w3", "feed_forward.w2"};
  const std::vector<std::string> sites = {"attn_in", "k", "v", "attn_out", "ffn_in", "ffn_mid"};
  for (size_t u = 0; u < units.size(); ++u) {
    EXPECT_EQ(units[u]->name(), "layers." + std::to_string(u));
    ASSERT_EQ(units[u]->layers().size(), 7u);
    for (size_t i = 0; i < 7; ++i) EXPECT_EQ(units[u]->layers()[i].name, "layers." + std::to_string(u) + "." + names[i]);
    ASSERT_EQ(units[u]->act_sites().size(), 6u);
    for (size_t j = 0; j < 6; ++j) EXPECT_EQ(units[u]->act_sites()[j].name, sites[j]);
  }
  EXPECT_EQ(units[0]->layers()[1].weight.sizes(), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(units[0]->layers()[6].weight.sizes(), (std::vector<int64_t>{64, 172}));

  RecordingContext rec;
  torch::NoGradGuard ng;
  model->units()[2]->forward(model->prologue(fixed_tokens(1, 8)), rec);
  const std::vector<std::string> expected = {
      "act 0 attn_in", "run 0 layers.2.attention.wq", "run 1 layers.2.attention.wk", "act 1 k",
      "run 2 layers.2.attention.wv", "act 2 v", "act 3 attn_out", "run 3 layers.2.attention.wo",
      "act 4 ffn_in", "run 4 layers.2.feed_forward.w1", "run 5 layers.2.feed_forward.w3", "act 5 ffn_mid",
      "run 6 layers.2.feed_forward.w2"};
  EXPECT_EQ(rec.events, expected);
}

TEST(LlamaAdapter, ContextHooksChangeTheForward) {
  // Zeroing ffn_mid through ctx.act must equal zeroing w2 in the weights; swapping wo via ctx.weight must
  // equal editing wo in place. Checks that the forward really uses what the context returns.
  auto model = load_llama2c(model_path());
  torch::Tensor tokens = fixed_tokens(2, 16);
  torch::NoGradGuard ng;
  struct ZeroMid : UnitContext {
    torch::Tensor act(const ActSite& s, int j, const torch::Tensor& x) override {
      return s.name == "ffn_mid" ? torch::zeros_like(x) : x;
    }
  } zero_mid;
  struct HalfWo : UnitContext {
    torch::Tensor weight(const QuantLayer& l, int i) override { return i == 3 ? l.weight * 0.5 : l.weight; }
  } half_wo;
  torch::Tensor a = model->forward(tokens, zero_mid);
  torch::Tensor b = model->forward(tokens, half_wo);
  torch::Tensor fp = model->forward(tokens);
  for (int l = 0; l < 5; ++l) model->layer(l).layers()[6].weight.zero_();
  EXPECT_TRUE(torch::allclose(a, model->forward(tokens), 1e-5, 1e-5));
  auto m2 = load_llama2c(model_path());
  for (int l = 0; l < 5; ++l) m2->layer(l).layers()[3].weight.mul_(0.5);
  EXPECT_TRUE(torch::allclose(b, m2->forward(tokens), 1e-5, 1e-5));
  EXPECT_GT((b - fp).abs().max().item<double>(), 1e-2);
}

TEST(LlamaAdapter, SmoothQuantNormFoldingKeepsLogits) {
  // Dividing attention_norm / ffn_norm by s and multiplying the consumers' input columns by s is exact.
  auto model = load_llama2c(model_path());
  torch::Tensor tokens = fixed_tokens(1, 24);
  torch::NoGradGuard ng;
  torch::Tensor before = model->forward(tokens);
  torch::Tensor s = torch::linspace(0.5, 2.0, 64);
  for (int l = 0; l < 5; ++l) {
    LlamaDecoderLayer& L = model->layer(l);
    L.attention_norm().div_(s);
    L.ffn_norm().div_(s);
    for (int i : {0, 1, 2, 4, 5}) L.layers()[i].weight.mul_(s);
  }
  EXPECT_LT((model->forward(tokens) - before).abs().max().item<double>(), 1e-4);
}

TEST(LlamaLoaders, HfRoundTripGivesIdenticalLogitsAndMatchesHfConvention) {
  auto model = load_llama2c(model_path());
  fs::path dir = temp_dir("hf");
  save_llama_hf(*model, dir.string());
  ASSERT_TRUE(fs::exists(dir / "config.json"));
  SafeTensorsFile st = load_safetensors((dir / "model.safetensors").string());
  EXPECT_EQ(st.tensors.size(), 2u + 5u * 9u);  // embed, norm, 5 x (2 norms + 7 linears); tied: no lm_head
  EXPECT_FALSE(st.contains("lm_head.weight"));
  // q_proj rows are permuted (not equal to wq), but hold the same rows
  torch::Tensor hq = st.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_FALSE(torch::equal(hq, model->layer(0).layers()[0].weight));
  EXPECT_TRUE(torch::equal(std::get<0>(hq.sum(1).sort()), std::get<0>(model->layer(0).layers()[0].weight.sum(1).sort())));

  auto back = load_language_model(dir.string());  // directory -> HF loader
  torch::Tensor tokens = fixed_tokens();
  torch::NoGradGuard ng;
  torch::Tensor a = model->forward(tokens), b = back->forward(tokens);
  EXPECT_TRUE(torch::equal(a, b)) << "max diff " << (a - b).abs().max().item<double>();
  // HF's own (rotate-half) equations on the written tensors give our logits: the permutation is right.
  torch::Tensor hf = hf_convention_logits(st.tensors, tokens, 5, 8, 4, true);
  EXPECT_LT((hf - a).abs().max().item<double>(), 1e-4);
  fs::remove_all(dir);
}

TEST(LlamaLoaders, ShardedHfWithIndexAndQwen2Biases) {
  auto model = load_llama2c(model_path());
  fs::path dir = temp_dir("sharded");
  save_llama_hf(*model, (dir / "single").string());
  SafeTensorsFile st = load_safetensors((dir / "single" / "model.safetensors").string());
  // Qwen2 flavour: q/k/v biases (seeded), tie_word_embeddings, split over two shards + index.json.
  torch::manual_seed(7);
  std::map<std::string, torch::Tensor> t = st.tensors;
  for (int l = 0; l < 5; ++l)
    for (auto [n, d] : std::vector<std::pair<std::string, int64_t>>{{"q", 64}, {"k", 32}, {"v", 32}})
      t["model.layers." + std::to_string(l) + ".self_attn." + n + "_proj.bias"] = 0.3 * torch::randn({d});
  std::map<std::string, torch::Tensor> s1, s2;
  nlohmann::json idx;
  for (auto& [n, x] : t) {
    bool first = n.find("layers.3") == std::string::npos && n.find("layers.4") == std::string::npos;
    (first ? s1 : s2)[n] = x;
    idx["weight_map"][n] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  fs::path q = dir / "qwen";
  fs::create_directories(q);
  save_safetensors((q / "model-00001-of-00002.safetensors").string(), s1);
  save_safetensors((q / "model-00002-of-00002.safetensors").string(), s2);
  std::ofstream(q / "model.safetensors.index.json") << idx.dump();
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "single" / "config.json"));
  cfg["model_type"] = "qwen2";
  std::ofstream(q / "config.json") << cfg.dump();

  auto qm = load_llama_hf(q.string());
  EXPECT_TRUE(qm->config().qkv_bias);
  ASSERT_TRUE(qm->layer(0).layers()[0].bias.defined());
  torch::Tensor tokens = fixed_tokens(2, 32);
  torch::NoGradGuard ng;
  torch::Tensor ours = qm->forward(tokens);
  torch::Tensor hf = hf_convention_logits(t, tokens, 5, 8, 4, true);
  EXPECT_LT((ours - hf).abs().max().item<double>(), 1e-4);
  EXPECT_GT((ours - model->forward(tokens)).abs().max().item<double>(), 1e-2);  // the biases mattered
  fs::remove_all(dir);
}

TEST(LlamaLoaders, ErrorsNameTheFileAndSizes) {
  fs::path dir = temp_dir("errors");
  std::ifstream f(model_path(), std::ios::binary);
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_EQ(buf.size(), 1056540u);

  std::string trunc = (dir / "trunc.bin").string();
  std::ofstream(trunc, std::ios::binary).write(buf.data(), 1000000);
  std::string msg = error_message([&] { load_llama2c(trunc); });
  EXPECT_NE(msg.find(trunc), std::string::npos) << msg;
  EXPECT_NE(msg.find("1000000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1056540"), std::string::npos) << msg;
  EXPECT_THROW(load_llama2c(trunc), IoError);

  std::string tiny = (dir / "tiny.bin").string();
  std::ofstream(tiny, std::ios::binary).write(buf.data(), 10);
  EXPECT_THROW(load_llama2c(tiny), IoError);
  EXPECT_THROW(load_language_model((dir / "nope.bin").string()), IoError);

  // missing config.json
  fs::create_directories(dir / "noconfig");
  save_safetensors((dir / "noconfig" / "model.safetensors").string(), {{"x", torch::zeros({1})}});
  msg = error_message([&] { load_llama_hf((dir / "noconfig").string()); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_THROW(load_language_model((dir / "noconfig").string()), IoError);

  // missing tensor
  auto model = load_llama2c(model_path());
  save_llama_hf(*model, (dir / "hf").string());
  SafeTensorsFile st = load_safetensors((dir / "hf" / "model.safetensors").string());
  st.tensors.erase("model.layers.2.mlp.up_proj.weight");
  save_safetensors((dir / "hf" / "model.safetensors").string(), st.tensors);
  msg = error_message([&] { load_llama_hf((dir / "hf").string()); });
  EXPECT_NE(msg.find("model.layers.2.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_THROW(load_llama_hf((dir / "hf").string()), ModelError);

  // wrong shape
  st.tensors["model.layers.2.mlp.up_proj.weight"] = torch::zeros({171, 64});
  save_safetensors((dir / "hf" / "model.safetensors").string(), st.tensors);
  msg = error_message([&] { load_llama_hf((dir / "hf").string()); });
  EXPECT_NE(msg.find("172"), std::string::npos) << msg;

  // untied config without lm_head
  st.tensors["model.layers.2.mlp.up_proj.weight"] = torch::zeros({172, 64});
  save_safetensors((dir / "hf" / "model.safetensors").string(), st.tensors);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "hf" / "config.json"));
  cfg["tie_word_embeddings"] = false;
  std::ofstream(dir / "hf" / "config.json") << cfg.dump();
  msg = error_message([&] { load_llama_hf((dir / "hf").string()); });
  EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(LlamaForward, RejectsBadInputs) {
  auto model = load_llama2c(model_path());
  EXPECT_THROW(model->forward(torch::zeros({1, 513}, torch::kLong)), ModelError);
  EXPECT_THROW(model->forward(torch::full({1, 4}, 512, torch::kLong)), ModelError);
  EXPECT_THROW(model->forward(torch::zeros({4}, torch::kLong)), ModelError);
}
