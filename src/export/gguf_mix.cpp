// llama.cpp-style per-tensor type mixes (include/flexquant/gguf_mix.h).
#include "flexquant/gguf_mix.h"

#include <algorithm>
#include <regex>

#include "flexquant/error.h"
#include "flexquant/gguf_llama.h"

namespace flexquant {

namespace {

struct Mix {
  const char* name;
  GgmlType base, more;
};
const Mix kMixes[] = {{"q4_k_m", GgmlType::Q4_K, GgmlType::Q6_K}, {"q5_k_m", GgmlType::Q5_K, GgmlType::Q6_K}};

// llama.cpp's choice of the layers that get more bits: the first and last eighth, and every third between.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// llama.cpp's replacement when a row fits no 256-weight super-block.
GgmlType row_fallback(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K: return GgmlType::Q4_0;
    case GgmlType::Q4_K: return GgmlType::Q5_0;
    case GgmlType::Q5_K: return GgmlType::Q5_1;
    case GgmlType::Q6_K: return GgmlType::Q8_0;
    default: return t;
  }
}

}  // namespace

std::vector<std::string> gguf_mixes() {
  std::vector<std::string> out;
  for (const Mix& m : kMixes) out.push_back(m.name);
  return out;
}

GgmlType gguf_mix_base(const std::string& mix) {
  for (const Mix& m : kMixes)
    if (mix == m.name) return m.base;
  std::string list;
  for (const auto& n : gguf_mixes()) list += (list.empty() ? "" : " | ") + n;
  throw ConfigError("weight.mix \"" + mix + "\" is not known -> allowed: \"\" (none) | " + list);
}

std::map<std::string, GgmlType> gguf_mix_types(const std::string& mix, ModelAdapter& model) {
  gguf_mix_base(mix);
  const Mix& m = *std::find_if(std::begin(kMixes), std::end(kMixes), [&](const Mix& x) { return mix == x.name; });
  static const std::regex block(R"(blk\.(\d+)\.(\w+)\.weight)");
  std::map<std::string, std::pair<std::string, int64_t>> kind;  // adapter name -> (GGUF tensor kind, block index)
  std::map<std::string, int64_t> count;
  for (QuantLayer* l : model.all_layers()) {
    const std::string g = gguf_tensor_name(l->name + ".weight");
    std::smatch sm;
    FQ_CHECK(std::regex_match(g, sm, block), ConfigError, "weight.mix: layer \"", l->name, "\" (", g,
             ") is not in a llama block");
    kind[l->name] = {sm[2].str(), std::stoll(sm[1].str())};
    ++count[sm[2].str()];
  }
  std::map<std::string, GgmlType> out;
  for (QuantLayer* l : model.all_layers()) {
    const auto& [k, i] = kind.at(l->name);
    const bool more = (k == "attn_v" || k == "ffn_down") && use_more_bits(i, count.at(k));
    GgmlType t = more ? m.more : m.base;
    if (l->weight.size(-1) % ggml_type_info(t).block != 0) t = row_fallback(t);
    out[l->name] = t;
  }
  return out;
}

}  // namespace flexquant
