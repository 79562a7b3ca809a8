// Llama checkpoint readers and writer: llama2.c "version 0" .bin (Karpathy, llama2.c export.py
// legacy_export) and the Hugging Face layout (config.json + safetensors shards, Llama/Mistral/Qwen2 names).
//
// HF stores wq/wk rows permuted for the rotate-half RoPE convention. convert_llama_weights_to_hf.py does
//   permute(w, n_heads, d1, d2) = w.view(n_heads, d1/n_heads/2, 2, d2).transpose(1, 2).reshape(d1, d2)
// so our reader applies its inverse (view(n, 2, hd/2, d2).transpose(1, 2)) and the writer applies permute,
// keeping the in-memory model in the adjacent-pair convention of llama2.c.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <type_traits>

#include "flexquant/error.h"
#include "flexquant/llama.h"
#include "flexquant/runtime.h"
#include "flexquant/safetensors.h"

namespace fs = std::filesystem;

namespace flexquant {

namespace {

// ------------------------------------------------------------------ llama2.c .bin

std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  FQ_CHECK(f.good(), IoError, "cannot open model file -> ", path, " -> expected a readable llama2.c .bin");
  std::streamsize n = f.tellg();
  f.seekg(0);
  std::vector<char> buf(static_cast<size_t>(n));
  FQ_CHECK(f.read(buf.data(), n).good(), IoError, "cannot read model file -> ", path);
  return buf;
}

// rows of `src` viewed as [n, 2, hd/2, cols] -> [n, hd/2, 2, cols]: rotate-half (HF) rows -> adjacent pairs.
torch::Tensor unpermute_rope(const torch::Tensor& w, int64_t n_heads) {
  const int64_t d1 = w.size(0), d2 = w.dim() == 2 ? w.size(1) : 1;
  return w.reshape({n_heads, 2, d1 / n_heads / 2, d2}).transpose(1, 2).reshape(w.sizes()).contiguous();
}
// inverse: adjacent pairs -> rotate-half (HF's permute()).
torch::Tensor permute_rope(const torch::Tensor& w, int64_t n_heads) {
  const int64_t d1 = w.size(0), d2 = w.dim() == 2 ? w.size(1) : 1;
  return w.reshape({n_heads, d1 / n_heads / 2, 2, d2}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

}  // namespace

std::unique_ptr<LlamaModel> load_llama2c(const std::string& path) {
  FQ_CHECK(fs::is_regular_file(path), IoError, "llama2.c model file not found -> ", path,
           " -> expected a .bin written by llama2.c export.py (version 0)");
  std::vector<char> buf = read_all(path);
  const size_t header_bytes = 7 * sizeof(int32_t);
  FQ_CHECK(buf.size() >= header_bytes, IoError, "llama2.c model file truncated -> ", path, " has ", buf.size(),
           " bytes -> expected at least the ", header_bytes, "-byte header; hint: re-copy the file");
  int32_t h[7];
  std::memcpy(h, buf.data(), header_bytes);
  LlamaConfig cfg;
  cfg.dim = h[0];
  cfg.hidden_dim = h[1];
  cfg.n_layers = h[2];
  cfg.n_heads = h[3];
  cfg.n_kv_heads = h[4];
  cfg.tied_classifier = h[5] > 0;
  cfg.vocab_size = h[5] < 0 ? -static_cast<int64_t>(h[5]) : h[5];
  cfg.max_seq_len = h[6];
  cfg.norm_eps = 1e-5;
  cfg.rope_theta = 10000;
  cfg.validate(path);

  const int64_t D = cfg.dim, H = cfg.hidden_dim, L = cfg.n_layers, V = cfg.vocab_size, KV = cfg.kv_dim();
  const int64_t hd = cfg.head_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> order = {
      {"tok_embeddings", {V, D}}, {"attention_norm", {L, D}}, {"wq", {L, D, D}},      {"wk", {L, KV, D}},
      {"wv", {L, KV, D}},         {"wo", {L, D, D}},          {"ffn_norm", {L, D}},   {"w1", {L, H, D}},
      {"w2", {L, D, H}},          {"w3", {L, H, D}},          {"norm", {D}},          {"freq_cis_real", {cfg.max_seq_len, hd / 2}},
      {"freq_cis_imag", {cfg.max_seq_len, hd / 2}}};
  if (!cfg.tied_classifier) order.push_back({"wcls", {V, D}});
  int64_t floats = 0;
  for (auto& [n, shape] : order) {
    int64_t c = 1;
    for (int64_t s : shape) c *= s;
    floats += c;
  }
  const size_t expected = header_bytes + static_cast<size_t>(floats) * sizeof(float);
  FQ_CHECK(buf.size() == expected, IoError, "llama2.c model file size mismatch -> ", path, " has ", buf.size(),
           " bytes -> expected ", expected, " bytes for dim ", D, ", hidden ", H, ", ", L, " layers, ", cfg.n_heads,
           " heads, ", cfg.n_kv_heads, " kv heads, vocab ", V, ", seq_len ", cfg.max_seq_len,
           (cfg.tied_classifier ? " (tied classifier)" : " (untied classifier)"),
           "; hint: the file is truncated or is not llama2.c version 0 (version 1/2 files start with magic 0x616b3432)");

  auto model = std::make_unique<LlamaModel>(cfg);
  model->source = path;
  const float* p = reinterpret_cast<const float*>(buf.data() + header_bytes);
  std::map<std::string, torch::Tensor> t;
  for (auto& [n, shape] : order) {
    torch::Tensor x = torch::empty(shape);
    std::memcpy(x.data_ptr<float>(), p, x.numel() * sizeof(float));
    p += x.numel();
    t[n] = x;
  }
  model->tok_embeddings().copy_(t["tok_embeddings"]);
  model->final_norm().copy_(t["norm"]);
  if (!cfg.tied_classifier) model->classifier().copy_(t["wcls"]);
  const char* mats[7] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};
  for (int i = 0; i < L; ++i) {
    LlamaDecoderLayer& layer = model->layer(i);
    layer.attention_norm().copy_(t["attention_norm"][i]);
    layer.ffn_norm().copy_(t["ffn_norm"][i]);
    for (int j = 0; j < 7; ++j) layer.layers()[j].weight.copy_(t[mats[j]][i]);
  }
  log_info("loaded llama2.c model " + path + " (dim " + std::to_string(D) + ", " + std::to_string(L) + " layers, vocab " +
           std::to_string(V) + ")");
  return model;
}

// ------------------------------------------------------------------ Hugging Face layout

namespace {

const char* kHfNames[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  FQ_CHECK(f.good(), IoError, "cannot open ", p.string(), " -> expected a Hugging Face model folder with config.json");
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(detail::concat("invalid JSON in ", p.string(), " -> ", e.what()));
  }
}

// j[key] as T, `def` when absent or null; ModelError naming the file and key when it has another type.
template <typename T>
T get_or(const nlohmann::json& j, const char* key, T def, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)  // a float would be cast (UB when out of range)
    FQ_CHECK(j[key].is_number_integer(), ModelError, file, ": \"", key, "\" is ", j[key].dump(), " -> expected an integer");
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(detail::concat(file, ": \"", key, "\" is ", j[key].dump(), " -> ", e.what()));
  }
}

// name -> tensor across shards; remembers the file each came from for messages.
struct TensorSource {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> file_of;
  std::string dir;

  bool contains(const std::string& n) const { return tensors.count(n) != 0; }
  const torch::Tensor& check(const std::string& n, const std::vector<int64_t>& shape) const {
    auto it = tensors.find(n);
    FQ_CHECK(it != tensors.end(), ModelError, "missing tensor -> ", n, " -> not found in the safetensors of ", dir,
             "; hint: is this a Llama/Mistral/Qwen2 checkpoint with HF tensor names?");
    FQ_CHECK(it->second.sizes().vec() == shape, ModelError, "tensor ", n, " in ", file_of.at(n), " has shape ",
             it->second.sizes(), " -> expected ", torch::IntArrayRef(shape), " from config.json");
    return it->second;
  }
  torch::Tensor get(const std::string& n, const std::vector<int64_t>& shape) const {
    return check(n, shape).to(torch::kFloat32);
  }
};

}  // namespace

std::unique_ptr<LlamaModel> load_llama_hf(const std::string& dir_str) {
  fs::path dir(dir_str);
  FQ_CHECK(fs::is_directory(dir), IoError, "model folder not found -> ", dir_str,
           " -> expected a Hugging Face folder (config.json + *.safetensors)");
  FQ_CHECK(fs::exists(dir / "config.json"), IoError, "missing config.json -> ", (dir / "config.json").string(),
           " -> a Hugging Face model folder needs config.json beside its *.safetensors");
  nlohmann::json c = read_json(dir / "config.json");
  const std::string config_path = (dir / "config.json").string();
  FQ_CHECK(c.is_object(), ModelError, config_path, " is not a JSON object -> ", c.type_name());
  std::string type = get_or<std::string>(c, "model_type", "llama", config_path);
  static const std::set<std::string> kTypes = {"llama", "mistral", "qwen2"};
  FQ_CHECK(kTypes.count(type), ModelError, dir_str, "/config.json: model_type \"", type,
           "\" -> allowed llama, mistral, qwen2");
  LlamaConfig cfg;
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"})
    FQ_CHECK(c.contains(key), ModelError, config_path, ": no \"", key, "\" -> needs hidden_size, intermediate_size, "
             "num_hidden_layers, num_attention_heads, vocab_size");
  cfg.dim = get_or<int64_t>(c, "hidden_size", 0, config_path);
  cfg.hidden_dim = get_or<int64_t>(c, "intermediate_size", 0, config_path);
  cfg.n_layers = get_or<int64_t>(c, "num_hidden_layers", 0, config_path);
  cfg.n_heads = get_or<int64_t>(c, "num_attention_heads", 0, config_path);
  cfg.vocab_size = get_or<int64_t>(c, "vocab_size", 0, config_path);
  cfg.n_kv_heads = get_or<int64_t>(c, "num_key_value_heads", cfg.n_heads, config_path);
  cfg.max_seq_len = get_or<int64_t>(c, "max_position_embeddings", 2048, config_path);
  cfg.norm_eps = get_or<double>(c, "rms_norm_eps", 1e-6, config_path);
  cfg.rope_theta = get_or<double>(c, "rope_theta", 10000.0, config_path);
  cfg.tied_classifier = get_or<bool>(c, "tie_word_embeddings", false, config_path);
  const int64_t head_dim = get_or<int64_t>(c, "head_dim", 0, config_path);
  FQ_CHECK(head_dim == 0 || (cfg.n_heads > 0 && head_dim == cfg.dim / cfg.n_heads && cfg.dim % cfg.n_heads == 0),
           ModelError, dir_str, "/config.json: head_dim ", head_dim,
           " * num_attention_heads != hidden_size -> unsupported");
  FQ_CHECK(!c.contains("rope_scaling") || c["rope_scaling"].is_null(), ModelError, dir_str,
           "/config.json: rope_scaling -> ", c["rope_scaling"].dump(), " -> only plain RoPE is supported");
  cfg.validate(dir_str + "/config.json");

  // Shards: index.json if present, else every *.safetensors in the folder.
  std::vector<fs::path> shards;
  if (fs::exists(dir / "model.safetensors.index.json")) {
    nlohmann::json idx = read_json(dir / "model.safetensors.index.json");
    std::set<std::string> files;
    FQ_CHECK(idx.contains("weight_map") && idx["weight_map"].is_object(), IoError,
             (dir / "model.safetensors.index.json").string(), " has no weight_map object");
    for (auto& [k, v] : idx["weight_map"].items()) {
      FQ_CHECK(v.is_string(), IoError, (dir / "model.safetensors.index.json").string(), ": weight_map[\"", k,
               "\"] is ", v.dump(), " -> expected a shard file name");
      files.insert(v.get<std::string>());
    }
    for (auto& f : files) shards.push_back(dir / f);
  } else {
    for (auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") shards.push_back(e.path());
    std::sort(shards.begin(), shards.end());
  }
  FQ_CHECK(!shards.empty(), IoError, "no *.safetensors in ", dir_str,
           " -> expected model.safetensors or shards listed in model.safetensors.index.json");
  TensorSource src;
  src.dir = dir_str;
  for (auto& s : shards) {
    SafeTensorsFile f = load_safetensors(s.string());
    for (auto& [n, t] : f.tensors) {
      src.tensors[n] = t;
      src.file_of[n] = s.string();
    }
  }
  cfg.qkv_bias = src.contains("model.layers.0.self_attn.q_proj.bias");
  const int64_t D = cfg.dim, H = cfg.hidden_dim, V = cfg.vocab_size, KV = cfg.kv_dim();
  const std::vector<std::vector<int64_t>> shapes = {{D, D}, {KV, D}, {KV, D}, {D, D}, {H, D}, {H, D}, {D, H}};
  // Every tensor present with its shape before the model is allocated: config.json alone must not size memory.
  src.check("model.embed_tokens.weight", {V, D});
  src.check("model.norm.weight", {D});
  if (!cfg.tied_classifier) src.check("lm_head.weight", {V, D});
  for (int i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    src.check(p + "input_layernorm.weight", {D});
    src.check(p + "post_attention_layernorm.weight", {D});
    for (int j = 0; j < 7; ++j) {
      src.check(p + kHfNames[j] + ".weight", shapes[j]);
      if (j <= 2 && cfg.qkv_bias) src.check(p + kHfNames[j] + ".bias", {shapes[j][0]});
    }
  }

  auto model = std::make_unique<LlamaModel>(cfg);
  model->source = dir_str;
  model->tok_embeddings().copy_(src.get("model.embed_tokens.weight", {V, D}));
  model->final_norm().copy_(src.get("model.norm.weight", {D}));
  if (!cfg.tied_classifier) model->classifier().copy_(src.get("lm_head.weight", {V, D}));
  for (int i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaDecoderLayer& layer = model->layer(i);
    layer.attention_norm().copy_(src.get(p + "input_layernorm.weight", {D}));
    layer.ffn_norm().copy_(src.get(p + "post_attention_layernorm.weight", {D}));
    for (int j = 0; j < 7; ++j) {
      torch::Tensor w = src.get(p + kHfNames[j] + ".weight", shapes[j]);
      torch::Tensor b;
      if (j <= 2 && cfg.qkv_bias) b = src.get(p + kHfNames[j] + ".bias", {shapes[j][0]});
      if (j == 0) {
        w = unpermute_rope(w, cfg.n_heads);
        if (b.defined()) b = unpermute_rope(b, cfg.n_heads);
      } else if (j == 1) {
        w = unpermute_rope(w, cfg.n_kv_heads);
        if (b.defined()) b = unpermute_rope(b, cfg.n_kv_heads);
      }
      layer.layers()[j].weight.copy_(w);
      if (b.defined()) layer.layers()[j].bias.copy_(b);
    }
  }
  log_info("loaded Hugging Face model " + dir_str + " (" + type + ", " + std::to_string(shards.size()) + " shard(s))");
  return model;
}

void save_llama_hf(LlamaModel& model, const std::string& dir_str) {
  const LlamaConfig& cfg = model.config();
  fs::path dir(dir_str);
  std::error_code ec;
  fs::create_directories(dir, ec);
  FQ_CHECK(!ec && fs::is_directory(dir), IoError, "cannot create output folder -> ", dir_str, " -> ", ec.message());

  nlohmann::json c;
  c["architectures"] = {"LlamaForCausalLM"};
  c["model_type"] = "llama";
  c["hidden_size"] = cfg.dim;
  c["intermediate_size"] = cfg.hidden_dim;
  c["num_hidden_layers"] = cfg.n_layers;
  c["num_attention_heads"] = cfg.n_heads;
  c["num_key_value_heads"] = cfg.n_kv_heads;
  c["vocab_size"] = cfg.vocab_size;
  c["max_position_embeddings"] = cfg.max_seq_len;
  c["rms_norm_eps"] = cfg.norm_eps;
  c["rope_theta"] = cfg.rope_theta;
  c["tie_word_embeddings"] = cfg.tied_classifier;
  c["attention_bias"] = cfg.qkv_bias;
  c["hidden_act"] = "silu";
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["torch_dtype"] = "float32";
  {
    std::ofstream f(dir / "config.json");
    FQ_CHECK(f.good(), IoError, "cannot write ", (dir / "config.json").string());
    f << c.dump(2) << "\n";
  }

  std::map<std::string, torch::Tensor> t;
  t["model.embed_tokens.weight"] = model.tok_embeddings().cpu();
  t["model.norm.weight"] = model.final_norm().cpu();
  if (!cfg.tied_classifier) t["lm_head.weight"] = model.classifier().cpu();
  for (int i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaDecoderLayer& layer = model.layer(i);
    t[p + "input_layernorm.weight"] = layer.attention_norm().cpu();
    t[p + "post_attention_layernorm.weight"] = layer.ffn_norm().cpu();
    for (int j = 0; j < 7; ++j) {
      torch::Tensor w = layer.layers()[j].weight.cpu(), b = layer.layers()[j].bias;
      if (b.defined()) b = b.cpu();
      if (j <= 1) {
        int64_t n = j == 0 ? cfg.n_heads : cfg.n_kv_heads;
        w = permute_rope(w, n);
        if (b.defined()) b = permute_rope(b, n);
      }
      t[p + kHfNames[j] + ".weight"] = w;
      if (b.defined()) t[p + kHfNames[j] + ".bias"] = b;
    }
  }
  save_safetensors((dir / "model.safetensors").string(), t, {{"format", "pt"}, {"source", model.source}});
  log_info("wrote Hugging Face folder " + dir_str + " (config.json + model.safetensors, " + std::to_string(t.size()) +
           " tensors)");
}

std::unique_ptr<LlamaModel> load_language_model(const std::string& path) {
  if (fs::is_directory(path)) return load_llama_hf(path);
  FQ_CHECK(fs::exists(path), IoError, "model not found -> ", path,
           " -> expected a llama2.c .bin file or a Hugging Face folder (config.json + *.safetensors)");
  return load_llama2c(path);
}

}  // namespace flexquant
