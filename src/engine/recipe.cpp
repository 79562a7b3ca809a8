// Recipe <-> JSON / key=value / docs, all driven by visit() so keys, flags and docs cannot drift.
#include "flexquant/recipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "flexquant/error.h"
#include "flexquant/mixed_precision.h"
#include "flexquant/format.h"
#include "flexquant/gguf_mix.h"

namespace flexquant {
namespace {

using json = nlohmann::json;

template <typename T>
std::string type_name() {
  if constexpr (std::is_same_v<T, bool>) return "bool";
  else if constexpr (std::is_integral_v<T>) return "int";
  else if constexpr (std::is_floating_point_v<T>) return "float";
  else return "string";
}

template <typename T>
std::string value_string(const T& v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_same_v<T, std::string>) return v;
  else if constexpr (std::is_floating_point_v<T>) return fmt::format("{:g}", v);
  else return std::to_string(v);
}

// Levenshtein distance for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> d(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) d[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = d[0];
    d[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cur = d[j];
      d[j] = std::min({d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
      prev = cur;
    }
  }
  return d[b.size()];
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  Recipe r;
  visit(r, [&](const char* key, auto&, const char*) { keys.push_back(key); });
  return keys;
}

std::string unknown_key_message(const std::string& key, const std::string& origin) {
  std::string best;
  size_t best_d = 1000;
  for (const auto& k : all_keys()) {
    size_t d = edit_distance(key, k);
    // also match the last component alone ("bits" -> "weight.bits")
    auto dot = k.rfind('.');
    if (dot != std::string::npos) d = std::min(d, edit_distance(key, k.substr(dot + 1)) + 1);
    if (d < best_d) best_d = d, best = k;
  }
  std::string msg = fmt::format("unknown recipe key \"{}\" in {}", key, origin);
  if (best_d <= 3) msg += fmt::format("; did you mean \"{}\"?", best);
  msg += " (`flexquant recipe --keys` lists every key)";
  return msg;
}

template <typename T>
void parse_value(const std::string& key, const std::string& text, T& out) {
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (text == "true" || text == "1" || text == "on") out = true;
      else if (text == "false" || text == "0" || text == "off") out = false;
      else throw std::invalid_argument("bool");
    } else if constexpr (std::is_same_v<T, std::string>) {
      out = text;
    } else if constexpr (std::is_floating_point_v<T>) {
      size_t pos = 0;
      out = static_cast<T>(std::stod(text, &pos));
      if (pos != text.size()) throw std::invalid_argument("trailing");
    } else {
      size_t pos = 0;
      long long v = std::stoll(text, &pos);
      if (pos != text.size()) throw std::invalid_argument("trailing");
      if constexpr (std::is_unsigned_v<T>) {
        if (v < 0) throw std::invalid_argument("negative");
      }
      out = static_cast<T>(v);
    }
  } catch (const std::logic_error&) {
    throw ConfigError(fmt::format("recipe key \"{}\" expects a {} but got \"{}\"", key, type_name<T>(), text));
  }
}

template <typename T>
void from_json_value(const std::string& key, const json& j, T& out, const std::string& origin) {
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) ok = j.is_boolean();
  else if constexpr (std::is_same_v<T, std::string>) ok = j.is_string();
  else if constexpr (std::is_floating_point_v<T>) ok = j.is_number();
  else if constexpr (std::is_unsigned_v<T>) ok = j.is_number_unsigned() || (j.is_number_integer() && j.get<long long>() >= 0);
  else ok = j.is_number_integer();
  FQ_CHECK(ok, ConfigError, "recipe key \"", key, "\" in ", origin, " expects a ", type_name<T>(), " but got ", j.dump());
  out = j.get<T>();
}

void flatten(const json& j, const std::string& prefix, std::map<std::string, json>& out, const std::string& origin) {
  FQ_CHECK(j.is_object(), ConfigError, "recipe ", origin, " must be a JSON object, got ", j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it.value().is_object()) flatten(it.value(), key, out, origin);
    else out[key] = it.value();
  }
}

}  // namespace

void Recipe::validate() const {
  auto in = [](const std::string& v, const std::vector<std::string>& allowed) {
    return std::find(allowed.begin(), allowed.end(), v) != allowed.end();
  };
  FQ_CHECK(version == 1, ConfigError, "recipe version ", version, " is not supported: this flexquant reads version 1");
  method_info(method);  // ConfigError listing the registered methods
  FQ_CHECK(weight_bits >= 2 && weight_bits <= 8, ConfigError, "weight.bits ", weight_bits, " is not valid: use 2..8");
  if (weight_format != "int") {
    const Format f = Format::parse(weight_format);  // ConfigError listing the presets for an unknown name
    FQ_CHECK(!f.is_int(), ConfigError, "weight.format \"", weight_format,
             "\" is an integer format -> use weight.format=int with weight.bits=", f.bits());
  }
  FQ_CHECK(in(weight_granularity, {"tensor", "channel", "group"}), ConfigError, "weight.granularity \"",
           weight_granularity, "\" is not valid: use tensor | channel | group");
  FQ_CHECK(weight_group_size >= 1, ConfigError, "weight.group_size ", weight_group_size, " must be >= 1");
  parse_scale_dtype(weight_scale_dtype);  // ConfigError naming the allowed values
  parse_scale_init(weight_init);          // ConfigError naming the allowed values
  check_weight_spec(weight_spec());  // the grid itself: format width, symmetry (one check, shared with the quantizer)
  if (!weight_mix.empty()) gguf_mix_base(weight_mix);  // ConfigError listing the mixes
  FQ_CHECK(first_last_bits == 0 || (first_last_bits >= 2 && first_last_bits <= 8), ConfigError,
           "weight.first_last_bits ", first_last_bits, " is not valid: use 0 (same as weight.bits) or 2..8");
  FQ_CHECK(act_bits == 32 || (act_bits >= 2 && act_bits <= 16), ConfigError, "act.bits ", act_bits,
           " is not valid: use 2..16, or 32 for FP activations");
  if (act_format != "int") check_act_format(Format::parse(act_format));
  FQ_CHECK(kv_bits == 32 || (kv_bits >= 2 && kv_bits <= 16), ConfigError, "act.kv_bits ", kv_bits,
           " is not valid: use 2..16, or 32 for off");
  FQ_CHECK(act_lr >= 0, ConfigError, "act.lr ", act_lr, " must be >= 0");
  FQ_CHECK(in(recon_unit, {"block", "layer"}), ConfigError, "recon.unit \"", recon_unit, "\" is not valid: use block | layer");
  FQ_CHECK(iters >= 0, ConfigError, "recon.iters ", iters, " must be >= 0");
  FQ_CHECK(batch >= 1, ConfigError, "recon.batch ", batch, " must be >= 1");
  FQ_CHECK(lr > 0, ConfigError, "recon.lr ", lr, " must be > 0");
  FQ_CHECK(in(lr_schedule, {"cosine", "constant"}), ConfigError, "recon.lr_schedule \"", lr_schedule,
           "\" is not valid: use cosine | constant");
  FQ_CHECK(qdrop >= 0 && qdrop < 1, ConfigError, "recon.qdrop ", qdrop, " is not valid: use [0, 1) (0.5 = QDrop)");
  FQ_CHECK(rounder.adaround_lambda >= 0, ConfigError, "adaround.lambda must be >= 0");
  FQ_CHECK(rounder.adaround_warmup >= 0 && rounder.adaround_warmup < 1, ConfigError, "adaround.warmup ",
           rounder.adaround_warmup, " is not valid: use [0, 1)");
  FQ_CHECK(rounder.lrq_rank >= 1, ConfigError, "lrq.rank ", rounder.lrq_rank, " must be >= 1");
  FQ_CHECK(calib_samples >= 1, ConfigError, "calib.samples ", calib_samples, " must be >= 1");
  FQ_CHECK(calib_seq_len >= 2, ConfigError, "calib.seq_len ", calib_seq_len, " must be >= 2");
  FQ_CHECK(rounder.gptq_damp > 0, ConfigError, "gptq.damp ", rounder.gptq_damp, " must be > 0 (typical 0.01)");
  FQ_CHECK(rounder.gptq_block_size >= 1, ConfigError, "gptq.block_size must be >= 1");
  if (!mixed_bits.empty()) {
    const std::vector<int> widths = parse_widths(mixed_bits);
    FQ_CHECK(weight_format == "int" && weight_mix.empty(), ConfigError, "mixed.bits chooses integer widths per layer; "
             "weight.format is ", weight_format, weight_mix.empty() ? "" : " and weight.mix " + weight_mix,
             " -> use weight.format=int without weight.mix");
    FQ_CHECK(mixed_budget >= widths.front() && mixed_budget <= widths.back(), ConfigError, "mixed.budget ",
             mixed_budget, " -> allowed ", widths.front(), "..", widths.back(), " (the range of mixed.bits ", mixed_bits, ")");
  }
  FQ_CHECK(pd_weight >= 0 && std::isfinite(pd_weight), ConfigError, "pd.weight ", pd_weight, " -> allowed >= 0 (0 = off)");
  FQ_CHECK(pd_temperature > 0 && std::isfinite(pd_temperature), ConfigError, "pd.temperature ", pd_temperature,
           " -> allowed > 0");
  FQ_CHECK(pd_weight == 0 || recon_unit == "block", ConfigError, "pd.weight needs block reconstruction (the loss ",
           "follows a unit's output to the logits) -> set recon.unit=block");
  FQ_CHECK(dc_iters >= 0 && dc_iters <= 100000, ConfigError, "pd.dc_iters ", dc_iters, " -> allowed 0 (off) .. 100000");
  FQ_CHECK(dc_lr > 0 && std::isfinite(dc_lr), ConfigError, "pd.dc_lr ", dc_lr, " -> allowed > 0");
  FQ_CHECK(dc_lambda > 0 && std::isfinite(dc_lambda), ConfigError, "pd.dc_lambda ", dc_lambda, " -> allowed > 0");
  FQ_CHECK(dc_iters == 0 || recon_unit == "block", ConfigError, "pd.dc_iters needs block reconstruction (the ",
           "corrected input gives a unit's target) -> set recon.unit=block");
  FQ_CHECK(cle_iters >= 0 && cle_iters <= 100, ConfigError, "cle.iters ", cle_iters,
           " -> allowed 0 (off) .. 100 sweeps (a few converge)");
  FQ_CHECK(smooth_alpha >= 0 && smooth_alpha <= 1, ConfigError, "smoothquant.alpha ", smooth_alpha,
           " is not valid: use (0, 1], or 0 for off");
}

Recipe Recipe::from_json_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text, nullptr, true, /*ignore_comments=*/true);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond double (fuzz_recipe)
    throw ConfigError(fmt::format("recipe {} is not valid JSON: {}", origin, e.what()));
  }
  std::map<std::string, json> flat;
  flatten(j, "", flat, origin);
  Recipe r;
  std::set<std::string> seen;
  visit(r, [&](const char* key, auto& field, const char*) {
    auto it = flat.find(key);
    if (it == flat.end()) return;
    from_json_value(key, it->second, field, origin);
    seen.insert(key);
  });
  for (auto& [k, v] : flat) {
    if (!seen.count(k)) throw ConfigError(unknown_key_message(k, origin));
  }
  FQ_CHECK(flat.count("version"), ConfigError, "recipe ", origin, " has no \"version\"; add \"version\": 1");
  r.validate();
  return r;
}

Recipe Recipe::from_file(const std::string& path) {
  std::ifstream f(path);
  FQ_CHECK(f.good(), IoError, "cannot open recipe file \"", path, "\"; hint: recipes/ has ready ones");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json_text(ss.str(), "\"" + path + "\"");
}

std::string Recipe::to_json(int indent) const {
  json j = json::object();
  Recipe copy = *this;
  visit(copy, [&](const char* key, auto& field, const char*) {
    std::string k = key;
    json* node = &j;
    size_t start = 0, dot;
    while ((dot = k.find('.', start)) != std::string::npos) {
      node = &(*node)[k.substr(start, dot - start)];
      start = dot + 1;
    }
    (*node)[k.substr(start)] = field;
  });
  return j.dump(indent);
}

void Recipe::set(const std::string& key, const std::string& value) {
  bool found = false;
  visit(*this, [&](const char* k, auto& field, const char*) {
    if (key == k) {
      parse_value(key, value, field);
      found = true;
    }
  });
  if (!found) throw ConfigError(unknown_key_message(key, "the overrides"));
}

WeightQuantSpec Recipe::weight_spec(int bits_override) const {
  WeightQuantSpec s;
  if (bits_override > 0) s.format = int_weight_format(bits_override);
  else s.format = weight_format == "int" ? int_weight_format(weight_bits) : Format::parse(weight_format);
  s.symmetric = weight_symmetric;
  s.granularity = parse_granularity(weight_granularity);
  s.group_size = weight_group_size;
  s.init = parse_scale_init(weight_init);
  s.scale_dtype = parse_scale_dtype(weight_scale_dtype);
  return s;
}

ActQuantSpec Recipe::act_spec(SiteRole role) const {
  ActQuantSpec s;
  s.per_token = act_per_token || role == SiteRole::KvCache;
  if (role == SiteRole::KvCache) {
    s.bits = kv_bits;
    return s;
  }
  s.bits = act_bits;
  if (act_bits >= 32 && act_format == "int") return s;
  // A classifier's input stays at first_last_bits like the classifier (QDrop), on integers.
  if (role == SiteRole::ClassifierInput && first_last_bits > 0) {
    s.bits = act_format == "int" ? std::max(act_bits, first_last_bits) : first_last_bits;
    return s;
  }
  if (act_format != "int") {
    s.format = Format::parse(act_format);
    s.bits = s.format->bits();
  }
  return s;
}

std::vector<RecipeField> describe_recipe() {
  std::vector<RecipeField> out;
  Recipe r;
  visit(r, [&](const char* key, auto& field, const char* help) {
    using T = std::decay_t<decltype(field)>;
    out.push_back({key, type_name<T>(), help, value_string(field)});
  });
  return out;
}

std::string methods_markdown() {
  std::string md =
      "## Methods\n\nFrom the method registry (include/flexquant/rounder.h; docs/adding-a-rounder.md adds one). The "
      "engine asks each entry what it needs: *training* methods get `recon.iters` Adam steps per unit, *Hessian* "
      "methods get each layer's input Hessian from the unit's quantized-path inputs.\n\n"
      "| method | needs | what it does |\n|---|---|---|\n";
  for (const MethodInfo& m : methods()) {
    std::string needs;
    if (m.needs.training) needs += "training";
    if (m.needs.hessian) needs += std::string(needs.empty() ? "" : ", ") + "Hessian";
    md += fmt::format("| `{}` | {} | {} |\n", m.name, needs.empty() ? "-" : needs, m.summary);
  }
  return md;
}

std::string recipe_markdown() {
  std::string md =
      "# Recipe reference\n\n"
      "Generated by `flexquant recipe --markdown` from the one `visit()` list in include/flexquant/recipe.h; "
      "every key is also a CLI flag (`--set key=value` or the dedicated flag). Recipes are JSON (comments allowed); "
      "dotted keys are nested objects (`weight.bits` is `{\"weight\": {\"bits\": 4}}`). Unknown keys are errors.\n\n"
      "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& f : describe_recipe())
    md += fmt::format("| `{}` | {} | `{}` | {} |\n", f.key, f.type, f.default_value, f.help);
  md += "\n" + methods_markdown();
  return md;
}

}  // namespace flexquant
