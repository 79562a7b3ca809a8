// Factories of the built-in rounders (internal to fq_quant; the public entry point is make_rounder()).
#pragma once
#include <memory>
#include <vector>

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
/// parameter shape, s1 = s1p broadcast to w, r = w/S, q = levels.nearest(r), out = s1*q (with an offset m:
/// r = w/S + m/s1, out = s1*q - m).
struct FlexMap {
  torch::Tensor s1p, s1, S, r, q, out;  // S: the full divisor s1*S2*s3*s4
  torch::Tensor off;                    // the offset broadcast to w (grids with a stored minimum), else undefined
  torch::Tensor passes;                 // bool, round(r) == q (not saturated); set by the fused path only
};

/// The fused CPU float32 map for integer grids with one scale per tensor or per output channel: from s1p and
/// exp_logs = exp(delta2 + delta3 + delta4) (ATen's exp, so the bits are the reference's), fills every other
/// FlexMap field and `passes` in one pass. False where it does not apply (flex_map then runs the ATen ops).
bool flex_map_fused(const torch::Tensor& w, const torch::Tensor& exp_logs, const WeightLevels& levels, FlexMap& m);

/// FlexRound's backward in one pass for integer grids with one scale per tensor or output channel, delta3 / delta4
/// absent or broadcast along the weight's first two dims: the gradients of
/// delta1 (summed per output channel or over the tensor: d1_numel), delta2, delta3, delta4 and w, each undefined
/// unless asked. Sums are accumulated in float64 in element order. False where it does not apply.
struct FlexGrads {
  torch::Tensor d1, d2, d3, d4, w;
};
bool flex_backward_fused(const torch::Tensor& g, const torch::Tensor& s1, const torch::Tensor& r,
                         const torch::Tensor& q, const torch::Tensor& passes, const torch::Tensor& S,
                         const std::vector<int64_t>& d1_shape, const std::vector<int64_t>& d3_shape,
                         const std::vector<int64_t>& d4_shape, const std::vector<int64_t>& need, FlexGrads& out);
FlexMap flex_map(const torch::Tensor& w, const torch::Tensor& s1_0, const torch::Tensor& delta1,
                 const torch::Tensor& delta1_0, const torch::Tensor& delta2, const torch::Tensor& delta3,
                 const torch::Tensor& delta4, const WeightLevels& levels, const WeightQuantSpec& spec,
                 const torch::Tensor& offset = {});

/// The common grid s1 = s1_0 * exp(delta1 - delta1_0) that FlexRound and LRQ learn (delta1 = log s1 starts at
/// the initial grid), the zero point and the levels broadcast to the weight's shape; the stored minimum when qp has
/// one (only methods that take the offset themselves receive it, Rounder::takes_offset).
struct FlexGrid {
  torch::Tensor s1_0, z, delta1_0, delta1, offset;
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
