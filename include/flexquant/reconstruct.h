// The quantization engine: walks a ModelAdapter's units in forward order and fits each unit's weight
// rounders (and LSQ activation steps) by block-wise output reconstruction (BRECQ), inputs taken from the
// already-quantized preceding units, targets from the FP model, optional QDrop (methods.md §3, §10.5).
// One engine serves CNNs and language models.
#pragma once
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/quantizer.h"
#include "flexquant/recipe.h"
#include "flexquant/rounder.h"

namespace flexquant {

/// Per-unit outcome, one progress/report row.
struct UnitReport {
  std::string name;
  std::string method;
  int64_t iters = 0;
  double loss_start = 0;  ///< reconstruction loss of the initial (RTN) grid on the first batch
  double loss_end = 0;    ///< loss of the hardened unit on the same batch
  double seconds = 0;           ///< whole unit: grid init, calibration, training, propagation
  double ms_per_iter = 0;       ///< training loop only (Adam steps), per iteration
  long long peak_rss_bytes = 0; ///< process peak RSS while this unit ran (0 where the kernel cannot tell)
};

struct QuantizeReport {
  std::vector<UnitReport> units;
  double seconds = 0;
  long long peak_rss_bytes = 0;
  int64_t calib_samples = 0;
};

/// What quantization produced: hardened weights and frozen activation grids. The model's layers already
/// hold the dequantized weights; QuantizedContext applies the activation quantizers at inference.
struct QuantState {
  std::map<std::string, QuantizedTensor> weights;  ///< by QuantLayer::name
  /// Activation quantizers by site key (see site_key()).
  std::map<std::string, std::shared_ptr<ActQuantizer>> acts;
  /// SmoothQuant scales divided into norm weights before quantization ("layers.<i>.attention_norm" /
  /// "layers.<i>.ffn_norm"); saved so a reload re-applies them to the FP model bit for bit.
  std::map<std::string, torch::Tensor> smooth_scales;
  /// Cross-layer equalization scales per layer pair ([sweeps, C], equalize_model), replayed on reload.
  std::map<std::string, torch::Tensor> equalization_scales;
  /// Mixed precision: each hidden layer's weight width (allocate_bits), empty for a uniform run.
  std::map<std::string, int> layer_bits;
};

/// PD-Quant's prediction difference (methods.md §4a): KL(softmax(z_fp/T) || softmax(z_q/T)) over the last dim,
/// averaged over every other position (samples; tokens of a language model). Differentiable in z_q.
torch::Tensor prediction_difference(const torch::Tensor& z_fp, const torch::Tensor& z_q, double temperature);

/// Unique key of activation site j of a unit: "<unit>/<site name>".
std::string site_key(const Unit& unit, const ActSite& site);

/// Inference context for a quantized model: weights as stored in the layers, activations through the
/// frozen quantizers of `state`.
class QuantizedContext : public UnitContext {
 public:
  explicit QuantizedContext(const QuantState& state) : state_(state) {}
  void begin_unit(const Unit& u) override { unit_ = &u; }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override;
  std::unique_ptr<UnitContext> fork() const override { return std::make_unique<QuantizedContext>(state_); }

 private:
  const QuantState& state_;
  const Unit* unit_ = nullptr;
};

/// Runs the model on `input` through a QuantizedContext (handles the per-unit bookkeeping).
torch::Tensor quantized_forward(ModelAdapter& model, const QuantState& state, const torch::Tensor& input);

/// Progress callback: unit index, unit count, and a one-line status.
using ProgressFn = std::function<void(const std::string& line)>;

/// A long run's safety net: after every finished unit the engine writes `path` (under a temporary name, renamed),
/// holding what the next unit needs; with `resume`, a run whose checkpoint exists continues after its last finished
/// unit and ends with the result an uninterrupted run gives (same codes, grids and report losses).
struct CheckpointOptions {
  std::string path;     ///< "" = no checkpoints
  bool resume = false;  ///< continue from `path` when it exists (ConfigError if it belongs to another run)
};

/// Quantizes `model` in place (layers get the dequantized weights) from calibration inputs (images
/// [N,3,H,W] or tokens [N,T]) under `recipe`; fills `state`. `max_units` > 0 stops after that many units and
/// leaves the rest FP (tests, or looking at one slow unit).
QuantizeReport quantize_model(ModelAdapter& model, const torch::Tensor& calib_inputs, const Recipe& recipe,
                              QuantState& state, const ProgressFn& progress = {}, int64_t max_units = 0,
                              const CheckpointOptions& checkpoint = {});

/// The per-layer weight spec the recipe gives a layer (first/last-layer policy for CNNs).
std::vector<std::vector<WeightQuantSpec>> layer_specs(ModelAdapter& model, const Recipe& recipe,
                                                      const std::map<std::string, int>& layer_bits = {});

}  // namespace flexquant
