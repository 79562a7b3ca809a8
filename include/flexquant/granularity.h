// Quantization parameters (scale, zero point) and how they are shared across a tensor.
//
// Weights are [out, in, ...]: axis 0 is the output channel and the "input dimension" is the flattened
// remainder (K = numel / size(0)), as in torchao's PerTensor / PerAxis(0) / PerGroup.
// One Granularity serves every quantizer: these format operations, the engine's weight grids
// (flexquant/quantizer.h) and the recipe's weight.granularity.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace flexquant {

class Format;

/// Which elements share one scale / zero point.
enum class Granularity {
  PerTensor,   ///< one scale for the whole tensor
  PerChannel,  ///< one scale per output channel (axis 0)
  PerGroup,    ///< one scale per group of group_size consecutive elements along the flattened input dims
};

/// Parses "tensor" | "channel" | "group" (also spelled "per_tensor" ...); throws ConfigError otherwise.
Granularity parse_granularity(const std::string& name);
/// "tensor" | "channel" | "group" (what the recipe's weight.granularity takes).
std::string to_string(Granularity g);

/// Scale and (optional) zero point of an affine quantizer: code q = clamp(round(x / scale) + zero_point,
/// qmin, qmax), value = (q - zero_point) * scale. Shapes for x with C = x.size(0), K = x.numel() / C:
///   PerTensor:  scale.numel() == 1
///   PerChannel: scale.numel() == C            (e.g. [C] or [C, 1])
///   PerGroup:   scale.numel() == C * ceil(K / group_size), row-major [C, G]; the last group may be partial.
struct ScaleParams {
  /// fp32, every entry finite and > 0 (checked: NumericError otherwise).
  torch::Tensor scale;
  /// int32 (or any integer dtype) of scale's numel, or undefined for symmetric (zero point 0).
  /// Only integer formats take a non-zero zero point; it must lie in [qmin, qmax] of the format.
  torch::Tensor zero_point;
  /// Default PerTensor.
  Granularity granularity = Granularity::PerTensor;
  /// Group size for PerGroup, >= 1; ignored otherwise. Default 0.
  int64_t group_size = 0;

  /// A per-tensor ScaleParams from plain numbers.
  static ScaleParams per_tensor(float scale, int32_t zero_point = 0);
};

/// Min-max ("absmax" when symmetric) ScaleParams for x in format f, the round-to-nearest baseline.
/// Symmetric: scale = max|x| / f.max_value(). Asymmetric (integer formats only):
/// scale = (max(x,0) - min(x,0)) / (qmax - qmin), zero_point = clamp(qmin - round(min(x,0) / scale)).
/// An all-zero slice gets scale 1 (so it never produces NaN). group_size is used for PerGroup only.
ScaleParams minmax_scale_params(const torch::Tensor& x, const Format& f, Granularity g, int64_t group_size = 0,
                       bool symmetric = true);

}  // namespace flexquant
