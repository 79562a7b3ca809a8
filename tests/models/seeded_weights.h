// Seeded weights for the torchvision goldens (tests/models/golden/README.md): the same names, shapes and random
// calls as gen_torchvision_golden.py, so C++ tests can build resnet18 / resnet50 / mobilenet_v2 with known weights.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "flexquant/safetensors.h"

namespace flexquant::testing {

// Rebuilds the golden's weights: same names, same order, same random calls as the Python generator.
inline SafeTensorsFile fill_weights(const SafeTensorsFile& golden, std::vector<double>& sums) {
  SafeTensorsFile w;
  w.path = "<generated " + golden.metadata.at("arch") + ">";
  torch::manual_seed(std::stoull(golden.metadata.at("seed")));
  auto ends = [](const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  for (const auto& entry : nlohmann::json::parse(golden.metadata.at("order"))) {
    const std::string name = entry[0];
    const std::vector<int64_t> shape = entry[1];
    torch::Tensor v;
    if (ends(name, "num_batches_tracked")) {
      v = torch::zeros(shape, torch::kInt64);  // present in real state dicts; the loader must ignore it
    } else if (ends(name, "running_var")) {
      v = torch::rand(shape) * 0.5 + 0.5;
    } else if (ends(name, "running_mean")) {
      v = torch::randn(shape) * 0.1;
    } else if (shape.size() >= 2) {
      int64_t fan_in = 1;
      for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
      v = torch::randn(shape) * std::sqrt(2.0 / static_cast<double>(fan_in));
    } else if (ends(name, ".weight")) {
      v = torch::randn(shape) * 0.1 + 1;
    } else {
      v = torch::randn(shape) * 0.1;
    }
    if (!ends(name, "num_batches_tracked")) sums.push_back(v.to(torch::kFloat64).sum().item<double>());
    w.names.push_back(name);
    w.tensors[name] = v;
  }
  return w;
}

/// The weights of the golden for `arch` ("resnet18", "resnet50", "mobilenet_v2"), rebuilt from its seed.
inline SafeTensorsFile seeded_weights(const std::string& arch) {
  std::vector<double> sums;
  return fill_weights(load_safetensors("tests/models/golden/torchvision_" + arch + ".safetensors"), sums);
}

}  // namespace flexquant::testing
