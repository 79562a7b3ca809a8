// Rounder: turns one FP weight into codes, possibly with learned parameters trained by the Reconstructor.
// Every rounder starts at round-to-nearest (FlexRound bit for bit) and ends with harden(), whose dequantized
// weight is exactly the hard forward the last training step used.
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "flexquant/quantizer.h"

namespace flexquant {

/// Options of the learned rounders (part of the Recipe).
struct RounderOptions {
  // AdaRound (methods.md §2)
  double adaround_lambda = 0.01;     ///< regulariser weight, >= 0
  double adaround_warmup = 0.2;      ///< fraction of iterations without regulariser, [0,1)
  double adaround_beta_start = 20;   ///< beta annealed linearly start -> end after warm-up
  double adaround_beta_end = 2;
  // FlexRound (methods.md §1.1)
  bool flexround_learn_s1 = true;    ///< learn the common grid s1 jointly (the paper's ablation: off = fixed)
  bool flexround_s3 = true;          ///< per-output-channel divisor
  bool flexround_s4 = true;          ///< per-input-channel divisor (Conv2d only; absent for Linear)
  // LRQ (methods.md §1.6)
  int64_t lrq_rank = 4;              ///< rank r of the low-rank S2, capped at min(Cout, Cin)
};

class Rounder {
 public:
  virtual ~Rounder() = default;
  virtual std::string name() const = 0;
  /// Prepare from the FP weight w ([Cout, ...]) and its initial grid qp (from init_qparams).
  virtual void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) = 0;
  /// Fake-quantized weight for the current parameters, differentiable w.r.t. parameters(); w's shape.
  /// `hard` = true gives the value harden() would export (AdaRound: h = 1[V >= 0]).
  virtual torch::Tensor forward(bool hard = false) = 0;
  /// Learned tensors (requires_grad), empty for RTN.
  virtual std::vector<torch::Tensor> parameters() = 0;
  /// Rounding regulariser at iteration `step` of `total` (AdaRound); a zero scalar for the others.
  virtual torch::Tensor regularizer(int64_t step, int64_t total);
  /// Final codes; hardened.dequantize() == forward(true) bit for bit.
  virtual QuantizedTensor harden() = 0;
  /// Suggested default learning rate for parameters() (AdaRound 1e-3; FlexRound set by the recipe).
  virtual double default_lr() const { return 1e-3; }
};

/// "rtn" | "adaround" | "flexround" | "lrq"; ConfigError listing the valid names otherwise.
std::unique_ptr<Rounder> make_rounder(const std::string& name, const RounderOptions& opts = {});
std::vector<std::string> rounder_names();

/// Activation quantizer with a learned step (LSQ, methods.md §7.1) used at an ActSite during reconstruction,
/// or dynamic per-token min/max (no parameters) for LLM W4A8/KV8-style evaluation.
struct ActQuantSpec {
  int bits = 8;                 ///< 2..16; 32 = off
  bool per_token = false;       ///< dynamic per-token asymmetric min/max (methods.md §1.5), no learned step
};

class ActQuantizer {
 public:
  ActQuantizer(const ActQuantSpec& spec, bool non_negative);
  /// Static per-tensor grid from calibration samples (L2.4 MSE search; unsigned when non_negative).
  void calibrate(const torch::Tensor& samples);
  /// Fake-quantize x. While training with drop_prob p > 0, each element keeps its FP value with prob. p
  /// (QDrop); `gen` seeds that draw.
  torch::Tensor forward(const torch::Tensor& x);
  std::vector<torch::Tensor> parameters();  ///< the LSQ step (empty for per-token)
  void set_training(bool on, double drop_prob = 0.0) { training_ = on; drop_prob_ = drop_prob; }
  const ActQuantSpec& spec() const { return spec_; }
  float step() const;           ///< current scale (static mode)
  float zero_point() const;     ///< current zero point (static mode)
  void set_grid(float step, float zero_point);  ///< restore a saved grid

 private:
  ActQuantSpec spec_;
  bool non_negative_;
  bool training_ = false;
  double drop_prob_ = 0.0;
  torch::Tensor step_;   // log-free positive step, requires_grad
  float zero_point_ = 0;
  bool calibrated_ = false;
};

}  // namespace flexquant
