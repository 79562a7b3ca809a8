// Integer weight-quantization primitives shared by every weight method (RTN, AdaRound, FlexRound, LRQ, GPTQ).
//
// One weight->code map for training and export (methods.md §10.4): a weight W of shape [Cout, ...] is seen in
// its *grouped view* Wg = [Cout, G, g] (the input dims flattened and zero-padded to G*g; per-tensor and
// per-channel use G = 1, g = numel/Cout). Scales and zero points broadcast against Wg:
//   per-tensor [1,1,1], per-channel [Cout,1,1], per-group [Cout,G,1].
// Codes are unsigned, code in [0, 2^b-1], value = scale * (code - zero_point). Symmetric grids use the constant
// zero_point 2^(b-1) (so q = code - z spans -2^(b-1) .. 2^(b-1)-1). Zero padding is exact because 0 is always
// on the grid (the range is forced to contain 0).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace flexquant {

enum class Granularity { PerTensor, PerChannel, PerGroup };
enum class ScaleInit { MinMax, Mse };

std::string to_string(Granularity g);
Granularity parse_granularity(const std::string& s);  ///< "tensor" | "channel" | "group"; ConfigError otherwise
std::string to_string(ScaleInit s);
ScaleInit parse_scale_init(const std::string& s);     ///< "minmax" | "mse"

/// How one weight tensor is quantized.
struct WeightQuantSpec {
  int bits = 4;                                   ///< 2..8
  bool symmetric = false;                         ///< false: per-group zero point (asymmetric)
  Granularity granularity = Granularity::PerChannel;
  int64_t group_size = 128;                       ///< PerGroup only; capped at the row length
  ScaleInit init = ScaleInit::Mse;                ///< L2.4 search (methods.md §1.2 / §10.12) or plain min/max
};

/// Grid parameters in the grouped view. q_lo = -zero_point, q_hi = 2^b-1-zero_point bound q = round(w/scale).
struct QParams {
  torch::Tensor scale;       ///< fp32, > 0
  torch::Tensor zero_point;  ///< fp32, integer-valued, in [0, 2^b-1]
  int bits = 4;
  int64_t qmax() const { return (int64_t{1} << bits) - 1; }
};

/// [Cout, ...] -> [Cout, G, g] (zero-padded) for the spec's granularity.
torch::Tensor to_grouped(const torch::Tensor& w, const WeightQuantSpec& spec);
/// Inverse of to_grouped: drops the padding and restores `shape`.
torch::Tensor from_grouped(const torch::Tensor& wg, at::IntArrayRef shape);

/// Initial grid for W (any shape [Cout, ...]); never produces a zero or non-finite scale.
QParams init_qparams(const torch::Tensor& w, const WeightQuantSpec& spec);

/// Round-to-nearest-even fake quantization of W with fixed qparams (returns W's shape).
torch::Tensor fake_quant_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp);

/// A hardened weight: integer codes plus the grid. dequantize() is what the model runs with.
struct QuantizedTensor {
  torch::Tensor codes;       ///< uint8 (bits <= 8), grouped view [Cout, G, g]
  QParams qparams;
  std::vector<int64_t> shape;  ///< original weight shape
  WeightQuantSpec spec;
  torch::Tensor dequantize() const;  ///< fp32, original shape; scale * (code - zero_point)
};

/// Codes of RTN with qparams, as a QuantizedTensor.
QuantizedTensor quantize_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp);

}  // namespace flexquant
