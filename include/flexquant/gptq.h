// GPTQ (Frantar et al., ICLR 2023; methods.md §7.2, §10.13): one-shot weight quantization that quantizes a
// layer's weight column by column and spreads each column's rounding error over the not-yet-quantized
// columns through the inverse Hessian of the layer-wise loss ||W X - Ŵ X||², H = 2 X Xᵀ / N.
//
// Typical use inside the engine (one unit at a time, inputs from the already-quantized preceding units):
//   HessianCollector hc;                       // a UnitContext: feeds every layer's input into its Hessian
//   unit.forward(x, hc);                       // over the calibration batches
//   for (int i = 0; i < n; ++i) {
//     QuantLayer& l = unit.layers()[i];
//     QuantizedTensor q = gptq_quantize(l.weight, hc.at(l.name).hessian(), spec, opts);
//     l.weight = q.dequantize();
//   }
// (methods.md's --true-sequential variant re-collects after each layer; the engine decides.)
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>

#include "flexquant/adapter.h"
#include "flexquant/quantizer.h"

namespace flexquant {

/// GPTQ options (defaults = the reference implementation).
struct GptqOptions {
  /// Damping added to the Hessian diagonal as a fraction of mean(diag H); > 0, typically 0.001..0.1.
  double damp = 0.01;
  /// Columns per lazy-batch update block; >= 1 (128 in the paper). Results do not depend on it beyond
  /// floating-point reassociation.
  int64_t block_size = 128;
  /// Quantize columns in order of decreasing diag(H) ("act-order"); the permutation is undone before
  /// export. With PerGroup granularity act_order implies static_groups (see below).
  bool act_order = false;
  /// PerGroup only: compute every group's grid up front from the ORIGINAL W (as quantize_rtn would)
  /// instead of from the error-updated columns at each group start. Forced on with act_order so that a
  /// group's grid always covers the original, contiguous column group the export format assumes.
  bool static_groups = false;
  /// A grid to quantize on as it is (static groups, not re-estimated from W): the engine's initial grid when the
  /// spec's scale storage fixes it (k-quant scales). Undefined scale: GPTQ finds its own.
  QParams grid;
  /// When a Cholesky factorisation fails, retry with the damping multiplied by 10, at most this many
  /// times (0..8); then throw NumericError.
  int max_damp_retries = 4;
};

/// Diagnostics of one gptq_quantize call (optional output).
struct GptqStats {
  double damp_used = 0;        ///< the relative damping that finally succeeded
  int64_t dead_columns = 0;    ///< columns with H_jj == 0 (zeroed in W, quantized to 0)
  double proxy_loss = 0;       ///< Σ_j ||e_j||² (the reference's "error"; sum over columns of (w-q)²/U_jj²)
};

/// Running Hessian H = (2/N) Σ_n x_n x_nᵀ of one layer's inputs, fp32, as a running mean (methods.md
/// §10.8). N counts input rows (tokens / im2col positions); the reference counts sequences instead,
/// which only rescales H, and GPTQ is invariant to that scale.
class HessianAccumulator {
 public:
  /// Linear: x [..., in]. Conv2d: x [B, Cin, H, W] is im2col'd with the layer's kernel, stride and
  /// padding so that H's columns match weight.flatten(1) = [Cout, Cin*kh*kw]. groups must be 1
  /// (ModelError otherwise). The accumulator lives on the device of the first input it sees.
  explicit HessianAccumulator(const QuantLayer& layer);
  /// A generic accumulator for rows x [..., columns].
  explicit HessianAccumulator(int64_t columns);

  void add(const torch::Tensor& x);
  /// [columns, columns] fp32; all zeros before the first add().
  torch::Tensor hessian() const;
  int64_t num_rows() const { return n_; }
  int64_t columns() const { return cols_; }

 private:
  LayerKind kind_ = LayerKind::Linear;
  int64_t cols_ = 0, kh_ = 1, kw_ = 1, stride_ = 1, padding_ = 0, dilation_ = 1;
  int64_t n_ = 0;
  torch::Tensor h_;
};

/// A UnitContext that accumulates one Hessian per layer name from observe_input(). Weights and
/// activation sites are delegated to `inner` (FP when none), so it can ride along any engine context.
class HessianCollector : public ObservingContext {
 public:
  using ObservingContext::ObservingContext;

  /// The accumulator of a layer; ModelError naming the known layers when it was never observed.
  const HessianAccumulator& at(const std::string& layer_name) const;
  bool contains(const std::string& layer_name) const { return acc_.count(layer_name) > 0; }
  void clear() { acc_.clear(); }

 protected:
  void observe(const QuantLayer& layer, int i, const torch::Tensor& x) override;

 private:
  std::map<std::string, HessianAccumulator> acc_;
};

/// GPTQ-quantize W ([Cout, ...], flattened to [rows = Cout, cols]) with the input Hessian H [cols, cols].
/// Follows the reference: dead columns (H_jj == 0 -> H_jj = 1, W[:,j] = 0), damping opts.damp·mean(diag H),
/// U = upper Cholesky of H⁻¹ (Cholesky, inverse, Cholesky), column loop with lazy block updates.
/// Grid: PerTensor / PerChannel from init_qparams on the ORIGINAL W (before dead-column zeroing);
/// PerGroup recomputed by init_qparams on the current, error-updated columns of each group at its first
/// column (or all up front when static_groups / act_order). The codes are on quantizer.h's grid
/// (code in [0, 2^b-1], value = scale·(code - zero_point), grouped view), so the result exports and
/// dequantizes like any QuantizedTensor. Runs on W's device; H is moved there. W and H are not modified.
/// Throws ConfigError for bad options/shapes and NumericError when the factorisation keeps failing or
/// H / W hold non-finite values.
QuantizedTensor gptq_quantize(const torch::Tensor& W, const torch::Tensor& H, const WeightQuantSpec& spec,
                              const GptqOptions& opts = {}, GptqStats* stats = nullptr);

/// Layer-output error proxy tr((W - Ŵ) H (W - Ŵ)ᵀ) (= (2/N)·||W X - Ŵ X||²_F for the H above), computed in
/// float64. W and Ŵ are [Cout, ...] with cols = numel/Cout matching H.
double hessian_weighted_error(const torch::Tensor& W, const torch::Tensor& W_hat, const torch::Tensor& H);

}  // namespace flexquant
