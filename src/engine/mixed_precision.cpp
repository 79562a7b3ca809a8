// Mixed precision under a size budget (see include/flexquant/mixed_precision.h).
#include "flexquant/mixed_precision.h"

#include <algorithm>
#include <sstream>

#include "flexquant/error.h"
#include "flexquant/quantizer.h"

namespace flexquant {

std::vector<int> parse_widths(const std::string& list) {
  std::vector<int> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    int b = 0;
    try {
      size_t used = 0;
      b = std::stoi(item, &used);
      FQ_CHECK(used == item.size(), ConfigError, "");
    } catch (const std::exception&) {
      throw ConfigError("mixed.bits \"" + list + "\": \"" + item + "\" is not a width -> e.g. mixed.bits=2,3,4");
    }
    FQ_CHECK(b >= 2 && b <= 8, ConfigError, "mixed.bits \"", list, "\": width ", b, " -> allowed 2..8");
    out.push_back(b);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  FQ_CHECK(out.size() >= 2, ConfigError, "mixed.bits \"", list, "\" -> give at least two widths, e.g. 2,3,4");
  return out;
}

std::vector<LayerSensitivity> measure_sensitivity(ModelAdapter& model, const torch::Tensor& calib, const Recipe& recipe,
                                                  const std::vector<int>& widths, int64_t samples) {
  torch::NoGradGuard ng;
  const torch::Tensor x = calib.slice(0, 0, std::min(samples, calib.size(0)));
  const torch::Tensor ref = model.forward(x).to(torch::kFloat64);
  std::vector<LayerSensitivity> out;
  for (QuantLayer* l : model.all_layers()) {
    if (l->role != LayerRole::Hidden) continue;
    LayerSensitivity s{l->name, l->weight.numel(), {}};
    const torch::Tensor w = l->weight;
    for (int b : widths) {
      const WeightQuantSpec spec = recipe.weight_spec(b);
      l->weight = fake_quant_rtn(w, spec, init_qparams(w, spec));
      s.error[b] = (model.forward(x).to(torch::kFloat64) - ref).pow(2).mean().item<double>();
    }
    l->weight = w;
    out.push_back(std::move(s));
  }
  FQ_CHECK(!out.empty(), ConfigError, "mixed precision: model ", model.arch(), " has no hidden layers to allocate");
  return out;
}

double average_bits(const std::vector<LayerSensitivity>& sens, const std::map<std::string, int>& bits) {
  double num = 0, den = 0;
  for (const auto& s : sens) {
    num += static_cast<double>(s.weights) * bits.at(s.layer);
    den += static_cast<double>(s.weights);
  }
  return num / den;
}

std::map<std::string, int> allocate_bits(const std::vector<LayerSensitivity>& sens, double budget) {
  FQ_CHECK(!sens.empty(), ConfigError, "mixed precision: no layers to allocate");
  std::map<std::string, int> bits;
  for (const auto& s : sens) bits[s.layer] = s.error.rbegin()->first;
  const int narrowest = sens.front().error.begin()->first;
  std::map<std::string, int> floor;
  for (const auto& s : sens) floor[s.layer] = narrowest;
  FQ_CHECK(average_bits(sens, floor) <= budget + 1e-9, ConfigError, "mixed.budget ", budget,
           " bits is below the narrowest width ", narrowest, " -> raise mixed.budget or add a narrower width");
  while (average_bits(sens, bits) > budget + 1e-9) {
    const LayerSensitivity* best = nullptr;
    int best_to = 0;
    double best_cost = 0;
    for (const auto& s : sens) {
      auto it = s.error.find(bits[s.layer]);
      if (it == s.error.begin()) continue;  // already at the narrowest width
      auto lower = std::prev(it);
      const double saved = static_cast<double>(s.weights) * (it->first - lower->first);
      const double cost = std::max(0.0, lower->second - it->second) / saved;
      if (!best || cost < best_cost) best = &s, best_to = lower->first, best_cost = cost;
    }
    bits[best->layer] = best_to;
  }
  return bits;
}

}  // namespace flexquant
