// Rounder: turns one FP weight into codes, possibly with learned parameters trained by the Reconstructor.
// Every rounder starts at round-to-nearest (FlexRound bit for bit) and ends with harden(), whose dequantized
// weight is exactly the hard forward the last training step used.
#pragma once
#include <torch/types.h>

#include <ATen/core/Generator.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flexquant/quantizer.h"

namespace flexquant {

/// Options of the registered methods (part of the Recipe; each method reads its own section).
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
  /// Grids with a stored minimum m (GGUF Q4_1/Q5_1): round w/S + m/s1 (the divisors scale the weight itself, m/s1
  /// a fractional zero point) instead of (w + m)/S (they scale the distance from the block's minimum).
  bool flexround_min_as_zero_point = false;
  // LRQ (methods.md §1.6)
  int64_t lrq_rank = 4;              ///< rank r of the low-rank S2, capped at min(Cout, Cin)
  // GPTQ (methods.md §7.2)
  double gptq_damp = 0.01;           ///< damping as a fraction of the mean Hessian diagonal, > 0
  bool gptq_act_order = false;       ///< columns in order of decreasing Hessian diagonal
  int64_t gptq_block_size = 128;     ///< lazy-update block size, >= 1
  /// The options of methods registered with their own (MethodInfo::options), by key ("<method>.<option>"); the
  /// recipe fills in each default, JSON and --set override it.
  std::map<std::string, double> extra;
  /// extra.at(key), or ConfigError naming the key when no registered method declares it.
  double option(const std::string& key) const;
};

/// Per-layer statistics the engine collects before init() because the method's registry entry asked for
/// them (MethodNeeds); members a method did not ask for stay undefined.
struct LayerStats {
  torch::Tensor hessian;  ///< [K, K] fp32 X^T X / rows of the layer's quantized-path inputs (needs.hessian)
};

class Rounder {
 public:
  virtual ~Rounder() = default;
  virtual std::string name() const = 0;
  /// Prepare from the FP weight w ([Cout, ...]) and its initial grid qp (from init_qparams).
  virtual void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) = 0;
  /// The engine's entry: init() with the statistics the method's registry entry asked for. Methods that
  /// need statistics (GPTQ's Hessian) override this one; the default ignores them.
  virtual void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats&) {
    init(w, spec, qp);
  }
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
  /// True when init() takes a QParams with an offset (grids with a stored minimum) and rounds with it itself,
  /// harden() setting qparams.offset. Otherwise make_rounder's wrapper hands the method w + offset on the plain
  /// grid and takes the offset off again.
  virtual bool takes_offset() const { return false; }
};

using RounderFactory = std::function<std::unique_ptr<Rounder>(const RounderOptions&)>;

/// What a method needs from the engine. The engine asks this, never the method's name.
struct MethodNeeds {
  bool training = false;  ///< learned parameters: recon.iters Adam steps of block/layer reconstruction
  bool hessian = false;   ///< LayerStats::hessian from the unit's quantized-path inputs (GPTQ)
};

/// A numeric option a method owns: recipe key "<method>.<name>" (its own section), default and help.
struct MethodOption {
  std::string key;
  double default_value = 0;
  std::string help;
};

/// A registry entry: everything the engine, the recipe and the docs know about a method.
struct MethodInfo {
  std::string name;      ///< the recipe's `method` value
  std::string summary;   ///< one line for `flexquant recipe --markdown` and error messages
  MethodNeeds needs;
  RounderFactory make;   ///< a fresh rounder per layer
  /// Options in the method's own recipe section, read by `make` as opts.option(key). (The built-ins keep
  /// typed fields in RounderOptions, with the same sections.)
  std::vector<MethodOption> options;
  /// Its weights are one grid each (QuantizedTensor without terms): what the GGUF and QDQ ONNX exports can hold.
  /// Multipoint sums are not; the exports refuse such a recipe before any work.
  bool single_grid = true;
};

/// Adds (or replaces) a method. The built-ins are registered by the registry itself (a static registrar
/// object in a static library would be dropped by the linker); code outside the library calls this.
void register_method(MethodInfo info);
/// The entry of `name`; ConfigError listing the registered names otherwise.
const MethodInfo& method_info(const std::string& name);
/// Registered methods, sorted by name.
std::vector<MethodInfo> methods();
std::vector<std::string> method_names();
/// method_info(name).make(opts).
std::unique_ptr<Rounder> make_rounder(const std::string& name, const RounderOptions& opts = {});

/// The FlexRound quantizer (methods.md §1.1) as one fused autograd op, shared by FlexRound and LRQ:
///   s1    = s1_0 * exp(delta1 - delta1_0)                       (grouped-view parameter shape)
///   S     = expand(s1) * exp(delta2 [+ delta3] [+ delta4])      (delta3/4 broadcast against w; may be undefined)
///   q     = levels.nearest(w / S)                                 (integers: clamp(round(w/S), -z, 2^b-1-z);
///                                                                   minifloat / power grids: nearest level)
///   out   = expand(s1) * q
/// With `offset` (a stored minimum m, in s1's shape; grids with QParams::offset) the weight keeps its own scale:
///   q = levels.nearest((w + m * S/s1) / S) = nearest(w/S + m/s1), out = s1 * q - m
/// (at step 0 S == s1, so this is (w + m)/s1, round-to-nearest's division, bit for bit); d/d delta2 is then
/// -s1 * (r - m/s1) * g = -(s1/S) * w * g in range, and d/d delta1 keeps the form below (r the full quotient).
/// delta1 is log s1. It enters as exp(delta1 - delta1_0) with delta1_0 = its initial value, so that at step 0
/// s1 == s1_0 bit for bit (exp(log s) != s in float, which would flip ~1e-6 of the codes against RTN); the value
/// and every gradient are those of exp(delta1 + ...). Gradients (STE: round is the identity, clamp blocks):
///   d/d delta2 = -s1 * r * g in range, 0 clamped (r = w/S; levels.passes); delta3/delta4: the same summed over
///   broadcast axes;
///   d/d delta1 = s1 * (q - r) * g in range, s1 * q * g clamped (both paths), summed into delta1's shape;
///   d/d w = s1 / S * g in range, 0 clamped (only when w requires grad: NUPES learns the map producing w).
/// w may be [Cout, ...] or its [Cout, K] flattening; `spec` gives the grouping of s1_0/delta1.
torch::Tensor flexround_quantize(const torch::Tensor& w, const torch::Tensor& s1_0, const torch::Tensor& delta1,
                                 const torch::Tensor& delta1_0, const torch::Tensor& delta2,
                                 const torch::Tensor& delta3, const torch::Tensor& delta4, const WeightLevels& levels,
                                 const WeightQuantSpec& spec, const torch::Tensor& offset = {});

/// Activation quantizer with a learned step (LSQ, methods.md §7.1) used at an ActSite during reconstruction,
/// or dynamic per-token min/max (no parameters) for LLM W4A8/KV8-style evaluation.
///
/// Static mode: x^ = s * clamp(round(x/s), -z, 2^b-1-z) with z fixed at calibration (0 for non-negative sites,
/// i.e. an unsigned grid) and s learned with LSQ's gradient scale g = 1/sqrt(numel(x) * (2^b-1)) applied as
/// s*g + (s - s*g).detach(); round and clamp use the STE (x gets gradient in range only). The step is kept
/// positive as max(|s|, 1e-8). Calibration (L2.4 MSE search, as for weights):
///   non-negative: 1-D search, 100 clip levels max*i/100, z = 0;
///   signed: 2-D search, 100 range fractions of (max-min) x every zero point (QDrop / FlexRound LLM code),
///           scored on a fixed strided subsample of at most 8192 values (the range itself uses every value).
/// Per-token mode: for every row of the last dim, scale = max((max-min)/(2^b-1), 1e-8) with min <= 0 <= max
/// forced, z = clamp(round(-min/scale), 0, 2^b-1), no parameters, gradient straight through.
struct ActQuantSpec {
  int bits = 8;                 ///< 2..15 quantize; >= 16 (32 = the recipe's "off") is the identity
  bool per_token = false;       ///< dynamic per-token asymmetric min/max (methods.md §1.5), no learned step
  /// A minifloat / power grid instead of integers (bits = its code width): symmetric, zero point 0, the levels
  /// of WeightLevels. Static: scale from the 80-step L2.4 shrink search over max|x| / max level, learned by LSQ
  /// (gradient (q - x/s) where nearest does not saturate, q where it does); per-token: scale = row max|x| / max
  /// level. Undefined (the default) = integers.
  std::optional<Format> format;
};

/// ConfigError naming the format when it is not an activation grid (act.format takes minifloat / power formats of
/// at most 8 bits; integers are act.bits). The one check: Recipe::validate and ActQuantizer both call it.
void check_act_format(const Format& format);

class ActQuantizer {
 public:
  ActQuantizer(const ActQuantSpec& spec, bool non_negative);
  /// Static per-tensor grid from calibration samples (L2.4 MSE search; unsigned when non_negative).
  void calibrate(const torch::Tensor& samples);
  /// Fake-quantize x. While training with drop_prob p > 0, each element keeps its FP value with prob. p
  /// (QDrop: out = where(U < p, x, x^), U uniform, fresh every call), drawn from the generator given to
  /// set_generator() or else torch's default generator (the engine seeds it per unit).
  /// Throws ConfigError when a static quantizer is used before calibrate()/set_grid().
  torch::Tensor forward(const torch::Tensor& x);
  /// How one call sits in a data-parallel step that cuts the batch into shards (the engine's train step).
  struct Call {
    int64_t batch_numel = 0;  ///< numel of the whole batch's tensor at this site: LSQ's gradient scale (0: x's own)
    at::Generator gen;        ///< QDrop's draw for this shard (undefined: set_generator's, else torch's default)
  };
  torch::Tensor forward(const torch::Tensor& x, const Call& call);
  /// Generator for the QDrop draw (CPU generator for CPU inputs); undefined = torch's default.
  void set_generator(at::Generator gen) { gen_ = std::move(gen); }
  /// True when this quantizer passes x through unchanged (bits >= 16).
  bool is_identity() const { return spec_.bits >= 16; }
  std::vector<torch::Tensor> parameters();  ///< the LSQ step (empty for per-token)
  void set_training(bool on, double drop_prob = 0.0) { training_ = on; drop_prob_ = drop_prob; }
  const ActQuantSpec& spec() const { return spec_; }
  float step() const;           ///< current scale (static mode)
  float zero_point() const;     ///< current zero point (static mode)
  void set_grid(float step, float zero_point);  ///< restore a saved grid

 private:
  void calibrate_levels(const torch::Tensor& x);
  torch::Tensor forward_levels(const torch::Tensor& x, const Call& call);
  torch::Tensor lsq_step(const torch::Tensor& x, double qmax, const Call& call);
  torch::Tensor drop(const torch::Tensor& x, const torch::Tensor& xq, const Call& call);
  ActQuantSpec spec_;
  bool non_negative_;
  std::shared_ptr<WeightLevels> levels_;  // minifloat / power grids
  double max_level_ = 0;
  bool training_ = false;
  double drop_prob_ = 0.0;
  torch::Tensor step_;   // log-free positive step, requires_grad
  float zero_point_ = 0;
  bool calibrated_ = false;
  at::Generator gen_;
};

}  // namespace flexquant
