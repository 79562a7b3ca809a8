// Factories of the built-in rounders (internal to fq_quant; the public entry point is make_rounder()).
#pragma once
#include <memory>

#include "flexquant/rounder.h"

namespace flexquant::rounders {

std::unique_ptr<Rounder> make_rtn(const RounderOptions& opts);
std::unique_ptr<Rounder> make_adaround(const RounderOptions& opts);
std::unique_ptr<Rounder> make_flexround(const RounderOptions& opts);
std::unique_ptr<Rounder> make_lrq(const RounderOptions& opts);
std::unique_ptr<Rounder> make_gptq(const RounderOptions& opts);
std::unique_ptr<Rounder> make_nupes(const RounderOptions& opts);
std::unique_ptr<Rounder> make_multipoint(const RounderOptions& opts);

/// A method that decides its codes once in init() from the layer's input Hessian (its registry entry sets
/// needs.hessian): nothing is trained, forward is the dequantized codes. GPTQ and multipoint.
class HessianRounder : public Rounder {
 public:
  using Rounder::init;
  /// ConfigError: without the Hessian there is nothing to decide from (not a silent RTN).
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override;
  torch::Tensor forward(bool hard) override;
  std::vector<torch::Tensor> parameters() override { return {}; }
  QuantizedTensor harden() override;

 protected:
  /// ConfigError when stats holds no Hessian.
  void check_stats(const LayerStats& stats) const;
  /// The decided codes; forward() returns their dequantized weight on `device`.
  void set_codes(QuantizedTensor q, const torch::Device& device);

 private:
  QuantizedTensor q_;
  torch::Tensor w_;
};

/// The FlexRound map without autograd (see flexround_quantize): s1p = s1_0*exp(delta1-delta1_0) in the grouped
/// parameter shape, s1 = s1p broadcast to w, r = w/S, q = levels.nearest(r), out = s1*q.
struct FlexMap {
  torch::Tensor s1p, s1, S, r, q, out;  // S: the full divisor s1*S2*s3*s4
};
FlexMap flex_map(const torch::Tensor& w, const torch::Tensor& s1_0, const torch::Tensor& delta1,
                 const torch::Tensor& delta1_0, const torch::Tensor& delta2, const torch::Tensor& delta3,
                 const torch::Tensor& delta4, const WeightLevels& levels, const WeightQuantSpec& spec);

/// The common grid s1 = s1_0 * exp(delta1 - delta1_0) that FlexRound and LRQ learn (delta1 = log s1 starts at
/// the initial grid), the zero point and the levels broadcast to the weight's shape.
struct FlexGrid {
  torch::Tensor s1_0, z, delta1_0, delta1;
  std::shared_ptr<WeightLevels> levels;
  void init(at::IntArrayRef weight_shape, const torch::TensorOptions& opt, const WeightQuantSpec& spec,
            const QParams& qp, bool learn_s1);
};

/// FlexRound's learned state: the grid and the divisors in log space, delta2 per weight, delta3 per output channel,
/// delta4 per input channel of a convolution (as the options enable them). Shared by FlexRound and NUPES.
struct FlexParams {
  FlexGrid grid;
  torch::Tensor delta2, delta3, delta4;
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const RounderOptions& o);
  /// delta1 (when learned), delta2, delta3, delta4 (where present), in that order.
  std::vector<torch::Tensor> parameters(const RounderOptions& o) const;
  /// flexround_quantize / flex_map of w with these parameters.
  torch::Tensor quantize(const torch::Tensor& w, const WeightQuantSpec& spec) const;
  FlexMap map(const torch::Tensor& w, const WeightQuantSpec& spec) const;
};

/// Codes (grouped view, uint8) and grid of a FlexMap; NumericError when s1 or q is not finite.
QuantizedTensor flex_harden(const FlexMap& m, const FlexGrid& g, at::IntArrayRef shape, const WeightQuantSpec& spec,
                            const std::string& who);

}  // namespace flexquant::rounders
