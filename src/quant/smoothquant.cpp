// SmoothQuant (Xiao, Lin, Seznec, Wu, Demouth, Han — ICML 2023, arXiv 2211.10438; methods.md §7.3).
// Eq. 4 of the paper: s_j = max|X_j|^α / max|W_j|^(1−α); X·diag(s)⁻¹ is folded into the preceding norm gain
// and diag(s)·W (our [out, in] layout: columns) into the following Linear weights, as smooth.py's
// smooth_ln_fcs does (weight maxima joint over the layers sharing the input, both clamps at 1e-5).
#include "flexquant/smoothquant.h"

#include <torch/torch.h>

#include <cmath>

#include "flexquant/error.h"

namespace flexquant {

void ActAbsMaxObserver::add(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(x.defined() && x.dim() >= 1 && x.numel() > 0, ConfigError, "ActAbsMaxObserver: empty input");
  const int64_t c = x.size(-1);
  FQ_CHECK(!absmax_.defined() || absmax_.size(0) == c, ConfigError, "ActAbsMaxObserver: channel count ", c,
           " differs from earlier inputs -> expected ", absmax_.defined() ? absmax_.size(0) : 0);
  torch::Tensor m = x.detach().reshape({-1, c}).abs().amax(0).to(torch::kFloat);
  FQ_CHECK(torch::isfinite(m).all().item<bool>(), NumericError,
           "ActAbsMaxObserver: activations hold NaN/inf -> allowed finite; hint: check the calibration inputs");
  absmax_ = absmax_.defined() ? torch::maximum(absmax_, m.to(absmax_.device())) : m;
  n_ += x.numel() / c;
}

void ActAbsMaxCollector::observe(const QuantLayer& layer, int i, const torch::Tensor& x) {
  obs_[layer.name].add(x);
}

const torch::Tensor& ActAbsMaxCollector::at(const std::string& layer_name) const {
  return observed(obs_, layer_name, "ActAbsMaxCollector").absmax();
}

torch::Tensor smooth_scales(const torch::Tensor& act_absmax, const std::vector<torch::Tensor>& weights,
                            double alpha) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(std::isfinite(alpha) && alpha >= 0 && alpha <= 1, ConfigError, "smoothquant.alpha ", alpha,
           " is not valid -> allowed [0, 1]; hint: 0.5 (paper default), 0.85 for Llama-2");
  FQ_CHECK(act_absmax.defined() && act_absmax.dim() == 1, ConfigError,
           "smooth_scales: activation maxima must be [C] -> got ", act_absmax.defined() ? act_absmax.sizes() : at::IntArrayRef{});
  FQ_CHECK(!weights.empty(), ConfigError, "smooth_scales: no weights given -> allowed one or more [out, C]");
  const int64_t c = act_absmax.size(0);
  torch::Tensor wmax;
  for (const torch::Tensor& w : weights) {
    FQ_CHECK(w.dim() == 2 && w.size(1) == c, ConfigError, "smooth_scales: weight shape ", w.sizes(),
             " does not consume the input -> expected [out, ", c, "]");
    torch::Tensor m = w.detach().abs().amax(0).to(act_absmax.device(), torch::kFloat);
    wmax = wmax.defined() ? torch::maximum(wmax, m) : m;
  }
  wmax = wmax.clamp_min(1e-5);
  torch::Tensor a = act_absmax.to(torch::kFloat);
  return (a.pow(alpha) / wmax.pow(1.0 - alpha)).clamp_min(1e-5);
}

namespace {
void check_scales(const torch::Tensor& s, int64_t c) {
  FQ_CHECK(s.defined() && s.dim() == 1 && s.size(0) == c, ConfigError, "apply_smoothing: scales shape ",
           s.defined() ? s.sizes() : at::IntArrayRef{}, " -> expected [", c, "]");
  FQ_CHECK(torch::isfinite(s).all().item<bool>() && (s > 0).all().item<bool>(), NumericError,
           "apply_smoothing: scales must be positive and finite; hint: use smooth_scales, which clamps at 1e-5");
}
}  // namespace

void apply_smoothing(torch::Tensor& norm_weight, std::vector<torch::Tensor*> weights, const torch::Tensor& s) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(norm_weight.defined() && norm_weight.dim() == 1, ConfigError, "apply_smoothing: norm gain must be [C]");
  const int64_t c = norm_weight.size(0);
  check_scales(s, c);
  for (torch::Tensor* w : weights)
    FQ_CHECK(w && w->dim() == 2 && w->size(1) == c, ConfigError, "apply_smoothing: weight shape ",
             w ? w->sizes() : at::IntArrayRef{}, " -> expected [out, ", c, "]");
  norm_weight.div_(s.to(norm_weight.device(), norm_weight.scalar_type()));
  for (torch::Tensor* w : weights) w->mul_(s.to(w->device(), w->scalar_type()).unsqueeze(0));
}

void apply_smoothing(torch::Tensor& norm_weight, torch::Tensor& norm_bias, std::vector<torch::Tensor*> weights,
                     const torch::Tensor& s) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(norm_bias.defined() && norm_bias.sizes() == norm_weight.sizes(), ConfigError,
           "apply_smoothing: norm bias must have the gain's shape [C]");
  apply_smoothing(norm_weight, std::move(weights), s);
  norm_bias.div_(s.to(norm_bias.device(), norm_bias.scalar_type()));
}

std::map<std::string, torch::Tensor> smooth_model(ModelAdapter& model,
                                                  const std::map<std::string, torch::Tensor>& act_absmax,
                                                  double alpha) {
  auto feeds = model.norm_feeds();
  FQ_CHECK(!feeds.empty(), ConfigError, "smoothquant.alpha is set but model \"", model.arch(),
           "\" declares no norm -> linear fold points (ModelAdapter::norm_feeds) -> set smoothquant.alpha=0");
  std::map<std::string, torch::Tensor> applied;
  for (NormFeed& f : feeds) {
    FQ_INTERNAL_ASSERT(f.gain && !f.layers.empty(), "norm feed \"", f.name, "\" has no gain or no layers");
    const std::string& first = f.layers.front()->name;
    auto it = act_absmax.find(first);
    FQ_CHECK(it != act_absmax.end() && it->second.defined(), ModelError, "smooth_model: no activation maxima for '",
             first, "' -> need the input max|x| of the first layer after every norm; hint: run collect_act_absmax "
             "on the FP model");
    std::vector<torch::Tensor> ws;
    std::vector<torch::Tensor*> wptrs;
    for (QuantLayer* l : f.layers) ws.push_back(l->weight), wptrs.push_back(&l->weight);
    torch::Tensor s = smooth_scales(it->second, ws, alpha);
    apply_smoothing(*f.gain, wptrs, s);
    applied[f.name] = s;
  }
  return applied;
}

std::map<std::string, torch::Tensor> smooth_model(ModelAdapter& model, const ActAbsMaxCollector& stats, double alpha) {
  std::map<std::string, torch::Tensor> maxima;
  for (const auto& kv : stats.observers()) maxima[kv.first] = kv.second.absmax();
  return smooth_model(model, maxima, alpha);
}

void apply_saved_smoothing(ModelAdapter& model, const std::map<std::string, torch::Tensor>& scales,
                           const std::string& origin) {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor*> gains;
  for (NormFeed& f : model.norm_feeds()) gains[f.name] = f.gain;
  for (const auto& [key, s] : scales) {
    auto it = gains.find(key);
    FQ_CHECK(it != gains.end(), ModelError, origin, " holds SmoothQuant scales for \"", key, "\" but model \"",
             model.arch(), "\" has no such norm; it does not match this model");
    torch::Tensor& g = *it->second;
    FQ_CHECK(s.dim() == 1 && s.size(0) == g.size(0), ModelError, origin, ": SmoothQuant scales \"", key,
             "\" have shape ", s.sizes(), " but the norm has ", g.size(0), " channels");
    g.div_(s.to(g.device(), g.scalar_type()));
  }
}

ActAbsMaxCollector collect_act_absmax(ModelAdapter& model, const std::vector<torch::Tensor>& batches) {
  torch::NoGradGuard no_grad;
  ActAbsMaxCollector stats;
  for (const torch::Tensor& b : batches) model.forward(b, stats);
  return stats;
}

}  // namespace flexquant
