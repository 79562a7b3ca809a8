// Mixed precision under a size budget (methods.md): each hidden layer's weight width is chosen from a measured
// sensitivity so that the model's hidden weights average at most `budget` bits.
//
//   sensitivity(l, b) = mean over a calibration subset of |logits(model with only layer l round-to-nearest at b
//                       bits) - logits(FP model)|^2        (the recipe's grid otherwise: granularity, symmetry, init)
//   allocation: every layer starts at the widest width; while the average exceeds the budget, the layer whose next
//   narrower width costs the least added sensitivity per bit saved (summed over its weights) steps down.
// Edge layers (the adapter's Input / Output roles) keep weight.first_last_bits as in uniform runs and are outside the
// budget, so a mixed run and a uniform run at the same average have the same edge layers. The engine then
// quantizes each layer at its width with the recipe's method; the widths are part of each layer's spec in the .fqz.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/recipe.h"

namespace flexquant {

struct LayerSensitivity {
  std::string layer;
  int64_t weights = 0;
  std::map<int, double> error;  ///< width -> sensitivity
};

/// Sensitivity of every hidden layer at every width, on the first (up to) `samples` calibration inputs.
std::vector<LayerSensitivity> measure_sensitivity(ModelAdapter& model, const torch::Tensor& calib, const Recipe& recipe,
                                                  const std::vector<int>& widths, int64_t samples = 64);

/// Greedy allocation (above): layer -> width, with the weighted average width <= budget. ConfigError when even the
/// narrowest width exceeds the budget.
std::map<std::string, int> allocate_bits(const std::vector<LayerSensitivity>& sens, double budget);

/// The widths of mixed.bits ("2,3,4"), ascending; ConfigError naming the value otherwise.
std::vector<int> parse_widths(const std::string& list);

/// Weighted average width of an allocation.
double average_bits(const std::vector<LayerSensitivity>& sens, const std::map<std::string, int>& bits);

}  // namespace flexquant
