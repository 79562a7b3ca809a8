// SmoothQuant (Xiao et al., ICML 2023; methods.md §7.3): migrate activation outliers into the weights with
// a per-input-channel scale s, X' = X·diag(s)⁻¹ folded into the preceding norm gain and W' = W·diag(s) on
// the weight columns. The network function is unchanged; only the ranges move, so that per-tensor static
// activation quantization (W8A8) loses less.
//
//   ActAbsMaxCollector stats;                         // a UnitContext: per-layer input max|x| per channel
//   for (auto& batch : calib) model.forward(batch, stats);
//   smooth_model(model, stats, 0.85);                 // at the adapter's norm feeds (Llama: q/k/v, w1/w3)
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "flexquant/adapter.h"

namespace flexquant {

/// Per-channel running max|x| over the last dimension of every tensor added (SmoothQuant's act_scales).
class ActAbsMaxObserver {
 public:
  /// x [..., C]; C must match earlier calls. Non-finite values throw NumericError. Kept in fp32 on the
  /// device of the first input.
  void add(const torch::Tensor& x);
  /// [C] fp32; undefined before the first add().
  const torch::Tensor& absmax() const { return absmax_; }
  int64_t num_rows() const { return n_; }  ///< rows (tokens) seen

 private:
  torch::Tensor absmax_;
  int64_t n_ = 0;
};

/// A UnitContext that records max|x| per input channel of every layer it sees, keyed by layer name.
/// Weights and activation sites are delegated to `inner` (FP when none).
class ActAbsMaxCollector : public ObservingContext {
 public:
  using ObservingContext::ObservingContext;

  /// Input max|x| [C] of a layer; ModelError naming the observed layers when it was never seen.
  const torch::Tensor& at(const std::string& layer_name) const;
  bool contains(const std::string& layer_name) const { return obs_.count(layer_name) > 0; }
  const std::map<std::string, ActAbsMaxObserver>& observers() const { return obs_; }

 protected:
  void observe(const QuantLayer& layer, int i, const torch::Tensor& x) override;

 private:
  std::map<std::string, ActAbsMaxObserver> obs_;
};

/// s_j = max|X_j|^α / max|W_{:,j}|^(1−α), clamped at >= 1e-5, where the weight max is taken jointly over all
/// `weights` ([out, C] each) that consume the same input (q/k/v; gate/up), itself clamped at >= 1e-5 as in
/// the reference. act_absmax: [C]. alpha in [0, 1] (0.5 = the paper's default; Llama-2 uses 0.85).
/// Returns [C] fp32 on act_absmax's device. ConfigError on shape mismatch or alpha out of range.
torch::Tensor smooth_scales(const torch::Tensor& act_absmax, const std::vector<torch::Tensor>& weights,
                            double alpha);

/// In place: norm_weight /= s (the preceding RMSNorm/LayerNorm gain γ [C]) and every weight's columns
/// *= s (W[:, j] *= s_j). The composite function norm -> Linear is unchanged (up to fp32 rounding).
/// In-place so that every holder of these tensors sees the smoothed values. s must be positive and finite.
void apply_smoothing(torch::Tensor& norm_weight, std::vector<torch::Tensor*> weights, const torch::Tensor& s);
/// Same, with a LayerNorm bias β [C] also divided by s.
void apply_smoothing(torch::Tensor& norm_weight, torch::Tensor& norm_bias, std::vector<torch::Tensor*> weights,
                     const torch::Tensor& s);

/// SmoothQuant on every fold point the adapter declares (ModelAdapter::norm_feeds(); Llama: attention_norm
/// with wq/wk/wv, ffn_norm with w1/w3): s from the input maxima of the feed's first layer and the joint weight
/// maxima of all its layers. `act_absmax` maps layer names to [C] maxima (ActAbsMaxCollector::observers()).
/// ConfigError when the model declares no fold points; ModelError naming a layer without maxima. Returns the
/// scales applied, keyed by NormFeed::name.
std::map<std::string, torch::Tensor> smooth_model(ModelAdapter& model,
                                                  const std::map<std::string, torch::Tensor>& act_absmax,
                                                  double alpha);
std::map<std::string, torch::Tensor> smooth_model(ModelAdapter& model, const ActAbsMaxCollector& stats, double alpha);
/// Re-applies saved scales (a reload): each feed named in `scales` gets gain /= s (its weights are replaced by
/// the stored quantized ones afterwards). ModelError naming a key the model has no feed for.
void apply_saved_smoothing(ModelAdapter& model, const std::map<std::string, torch::Tensor>& scales,
                           const std::string& origin);

/// Runs the FP model over `token_batches` (int64 [B,T] each) with an ActAbsMaxCollector.
ActAbsMaxCollector collect_act_absmax(ModelAdapter& model, const std::vector<torch::Tensor>& batches);

}  // namespace flexquant
