// Precision sweep (methods.md §9.1, Paxton et al.'s method applied to networks): run a model with every tensor
// rounded to a reduced-precision format - fp32 with k significand (fraction) bits, or a minifloat preset - with
// round-to-nearest and with stochastic rounding, and measure the damage: the task's metric, and the Wasserstein-1
// distance between the FP32 and the reduced-precision output distributions (image classifiers: per-class logits;
// language models: per-token negative log-likelihood). It tells a user how many bits a model needs, and where
// stochastic rounding beats round-to-nearest.
//
// What is rounded (an emulation of a machine whose every number has the format):
//   - every tensor of the model (ModelAdapter::named_tensors: weights, biases, norms, embeddings, classifier),
//     once, in place on a fresh copy of the model;
//   - every activation the engine can reach: each activation site a unit declares, each unit's output, the
//     prologue's output and the logits.
// Formats narrower than fp32's exponent range (minifloats) take a per-tensor scale amax / max_value, computed
// from the tensor itself (weights) or from each activation tensor as it flows (dynamic); fp32-range formats
// (sbits<k>) are used unscaled, as Paxton et al. do. Stochastic rounding draws from the counter-based stream of
// rounding.h with a distinct seed per tensor (derived from SweepOptions::seed), so results do not depend on the
// thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/format.h"
#include "flexquant/pipeline.h"
#include "flexquant/rounding.h"

namespace flexquant {

/// The formats a sweep runs by default: sbits23 .. sbits2 (sbits7 is named bf16), then fp16 and the minifloat
/// presets.
std::vector<Format> default_sweep_formats();

struct SweepOptions {
  std::vector<Format> formats = default_sweep_formats();
  std::vector<RoundingMode> modes{RoundingMode::NearestEven, RoundingMode::Stochastic};
  uint64_t seed = 0;         ///< stochastic rounding's stream
  bool weights = true;       ///< round the model's tensors
  bool activations = true;   ///< round the activations
};

/// One (format, rounding mode) run.
struct SweepPoint {
  std::string format;        ///< Format::name()
  int significand_bits = 0;  ///< fraction bits of the format (the k of sbits<k>; a minifloat's mantissa bits)
  bool fp32_range = false;   ///< fp32's exponent range (sbits<k>, bf16): the points plotted against k
  RoundingMode mode = RoundingMode::NearestEven;
  double metric = 0;         ///< the task's metric (top-1 % or perplexity)
  double w1 = 0;             ///< output_distance(FP32 outputs, these outputs)
  double seconds = 0;
};

struct SweepReport {
  std::string metric_name;
  bool higher_is_better = true;
  std::string outputs;       ///< what the W1 compares ("per-class logits", "per-token NLL")
  double fp_metric = 0;
  std::vector<SweepPoint> points;
};

/// Wasserstein-1 distance between the empirical distributions of two equally sized samples (flattened):
/// mean |sort(a)_i - sort(b)_i|, in float64. ConfigError when the sizes differ or a sample is empty.
double wasserstein1(const torch::Tensor& a, const torch::Tensor& b);

/// Mean over columns of wasserstein1(ref[:, j], got[:, j]) for outputs [N, K] (one column per class, or a
/// single column of per-token NLLs). ConfigError when the shapes differ.
double output_distance(const torch::Tensor& ref, const torch::Tensor& got);

/// Rounds every tensor of `model` in place (see the top of this header); `seed` keys stochastic rounding.
void round_model_tensors(ModelAdapter& model, const Format& f, RoundingMode mode, uint64_t seed);

/// A view of `model` whose forward rounds every activation (sites, unit outputs, prologue output, logits) to
/// `f`. `model` must outlive the view.
std::unique_ptr<ModelAdapter> emulate_activations(ModelAdapter& model, const Format& f, RoundingMode mode,
                                                  uint64_t seed);

/// Runs the task's model at every (format, mode) of the options and returns the table's rows, FP32 first
/// measured once. `progress` gets one line per finished point, `on_point` the point itself (so a caller can keep
/// finished points when a later one fails). SIGINT/SIGTERM stop it between points (InterruptedError).
SweepReport precision_sweep(const Task& task, const SweepOptions& options = {},
                            const std::function<void(const std::string&)>& progress = {},
                            const std::function<void(const SweepPoint&)>& on_point = {});
/// sweep_csv's header line.
std::string sweep_csv_header();
/// One CSV line of a point (sweep_csv's format, without the header).
std::string sweep_csv_line(const SweepPoint& p);

/// Markdown table: one row per format, metric and W1 for each rounding mode side by side.
std::string sweep_table(const SweepReport& report);
/// CSV, one line per point: format,significand_bits,fp32_range,mode,metric,w1,seconds.
std::string sweep_csv(const SweepReport& report);

}  // namespace flexquant
