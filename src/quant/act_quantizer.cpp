// Activation quantizers (conventions in include/flexquant/rounder.h):
//  - static per-tensor grid with a learned step: LSQ (Esser et al., ICLR 2020; methods.md §7.1) with the
//    gradient scale g = 1/sqrt(numel·Q_P), initialised by the L2.4 MSE search (QDrop / FlexRound LLM code,
//    methods.md §10.12), and QDrop's element-wise random keep-FP (Wei et al., ICLR 2022; methods.md §3.2);
//  - dynamic per-token asymmetric min/max (FlexRound LLM W4A8 evaluation, methods.md §1.5).
#include <ATen/ATen.h>

#include <cmath>

#include "flexquant/error.h"
#include "flexquant/lsq.h"
#include "flexquant/rounder.h"

namespace flexquant {
namespace {

constexpr double kMinStep = 1e-8;
constexpr double kSearchP = 2.4;
constexpr int kFractions = 100;
constexpr int64_t kMaxSearch2d = 8192;  // values scored by the 2-D (range x zero point) search

// A fixed, strided subsample of at most n values (deterministic; the search only scores candidates on it).
torch::Tensor subsample(const torch::Tensor& flat, int64_t n) {
  if (flat.numel() <= n) return flat;
  const int64_t stride = (flat.numel() + n - 1) / n;
  return flat.slice(0, 0, flat.numel(), stride);
}

}  // namespace

void check_act_format(const Format& f) {
  FQ_CHECK(!f.is_int() && f.bits() <= 8, ConfigError, "act.format \"", f.name(), "\" -> allowed: int (the width is "
           "act.bits), or a minifloat / power format of at most 8 bits (fp8_e4m3, fp8_e5m2, fp6_e3m2, fp4_e2m1, ...)");
}

ActQuantizer::ActQuantizer(const ActQuantSpec& spec, bool non_negative) : spec_(spec), non_negative_(non_negative) {
  if (spec.format) {
    check_act_format(*spec.format);
    spec_.bits = spec.format->bits();
    levels_ = std::make_shared<WeightLevels>(*spec.format, torch::Tensor());
    max_level_ = spec.format->max_value();
  }
  FQ_CHECK(spec_.bits >= 2, ConfigError, "activation bits ", spec_.bits,
           " is not valid -> allowed: 2..15, or >= 16 for no quantization");
}

// Minifloat / power grids: the weights' symmetric shrink search (80 steps of max|x|, L2.4 error), zero point 0.
void ActQuantizer::calibrate_levels(const torch::Tensor& x) {
  const double m = std::max(x.abs().max().item<double>(), kMinStep);
  auto xs = subsample(x, int64_t{1} << 18);
  double best_step = m / max_level_, best_score = INFINITY;
  for (int i = 0; i < 80; ++i) {
    const double step = std::max(m * (1 - 0.01 * i) / max_level_, kMinStep);
    const double err = (xs - step * levels_->nearest(xs / step)).abs_().pow_(kSearchP).sum().item<double>();
    if (err < best_score) best_score = err, best_step = step;
  }
  set_grid(static_cast<float>(best_step), 0.f);
}

void ActQuantizer::calibrate(const torch::Tensor& samples) {
  if (is_identity() || spec_.per_token) return;
  FQ_CHECK(samples.numel() > 0, ConfigError, "activation calibration got an empty tensor");
  check_weight_finite(samples, "activation calibration samples");
  torch::NoGradGuard ng;
  auto x = samples.detach().to(torch::kFloat).reshape(-1);
  if (levels_) {
    calibrate_levels(x);
    step_ = step_.to(samples.device());
    return;
  }
  const double qmax = static_cast<double>((int64_t{1} << spec_.bits) - 1);
  double best_step = kMinStep, best_zp = 0, best_score = INFINITY;
  if (non_negative_) {
    // 1-D: clip at max·i/100, unsigned grid (z = 0). Negative values (there should be none) clamp to 0.
    const double mx = std::max(0.0, x.max().item<double>());
    auto xs = subsample(x, int64_t{1} << 18);
    for (int i = kFractions; i >= 1; --i) {
      const double step = std::max(mx * i / kFractions / qmax, kMinStep);
      auto err = (xs - step * torch::clamp(torch::round(xs / step), 0.0, qmax)).abs_().pow_(kSearchP).sum().item<double>();
      if (err < best_score) best_score = err, best_step = step;
    }
    best_zp = 0;
  } else {
    const double mn = std::min(0.0, x.min().item<double>()), mx = std::max(0.0, x.max().item<double>());
    auto xs = subsample(x, kMaxSearch2d).unsqueeze(1);                     // [n, 1]
    auto zp = torch::arange(static_cast<int64_t>(qmax) + 1, x.options()).unsqueeze(0);  // [1, Z]
    for (int i = kFractions; i >= 1; --i) {
      const double step = std::max((mx - mn) * i / kFractions / qmax, kMinStep);
      auto q = torch::clamp(torch::round(xs / step), -zp, qmax - zp);
      auto err = (xs - step * q).abs_().pow_(kSearchP).sum(0);           // [Z]
      auto [score, arg] = err.min(0);
      if (score.item<double>() < best_score) {
        best_score = score.item<double>();
        best_step = step;
        best_zp = arg.item<double>();
      }
    }
  }
  set_grid(static_cast<float>(best_step), static_cast<float>(best_zp));
  step_ = step_.to(samples.device());
}

void ActQuantizer::set_grid(float step, float zero_point) {
  FQ_CHECK(std::isfinite(step) && step > 0, NumericError, "activation step ", step,
           " is not valid -> allowed: finite and > 0");
  const double qmax = levels_ ? 0.0 : static_cast<double>((int64_t{1} << std::min(spec_.bits, 30)) - 1);
  FQ_CHECK(zero_point >= 0 && zero_point <= qmax && std::nearbyint(zero_point) == zero_point, ConfigError,
           "activation zero point ", zero_point, " is not valid -> allowed: an integer in [0, ", qmax, "]");
  auto dev = step_.defined() ? step_.device() : torch::Device(torch::kCPU);
  step_ = torch::full({}, step, torch::TensorOptions().dtype(torch::kFloat).device(dev)).requires_grad_(true);
  zero_point_ = zero_point;
  calibrated_ = true;
}

// LSQ: the positive learned step, its gradient scaled by g = 1/sqrt(numel * q_max) in the backward only.
torch::Tensor ActQuantizer::lsq_step(const torch::Tensor& x, double qmax, const Call& call) {
  FQ_CHECK(calibrated_, ConfigError,
           "static activation quantizer used before calibrate() or set_grid() -> hint: calibrate it on samples");
  if (step_.device() != x.device()) step_ = step_.detach().to(x.device()).requires_grad_(true);
  const double g = 1.0 / std::sqrt(static_cast<double>(call.batch_numel > 0 ? call.batch_numel : x.numel()) * qmax);
  auto s = step_.abs().clamp_min(kMinStep);
  return s * g + (s - s * g).detach();
}

torch::Tensor ActQuantizer::forward_levels(const torch::Tensor& x, const Call& call) {
  if (spec_.per_token) {
    torch::NoGradGuard ng;
    auto xd = x.detach();
    auto scale = (xd.abs().amax(-1, true) / max_level_).clamp_min(kMinStep);
    return x + (scale * levels_->nearest(xd / scale) - x).detach();
  }
  auto s_eff = lsq_step(x, max_level_, call);
  auto v = x / s_eff;
  auto q = levels_->nearest(v.detach());
  // LSQ on a level set: straight through where nearest did not saturate; saturated values pass q (no x gradient).
  auto v_ste = torch::where(levels_->passes(v.detach(), q).to(torch::kBool), v + (q - v).detach(), q);
  return drop(x, v_ste * s_eff, call);
}

// QDrop: each element keeps its FP value with probability p, fresh draw every call.
torch::Tensor ActQuantizer::drop(const torch::Tensor& x, const torch::Tensor& xq, const Call& call) {
  if (!training_ || drop_prob_ <= 0) return xq;
  const at::Generator& gen = call.gen.defined() ? call.gen : gen_;
  auto u = gen.defined() ? at::rand(x.sizes(), gen, x.options().dtype(torch::kFloat))
                         : torch::rand(x.sizes(), x.options().dtype(torch::kFloat));
  return torch::where(u < drop_prob_, x, xq);
}

torch::Tensor ActQuantizer::forward(const torch::Tensor& x) { return forward(x, Call{}); }

torch::Tensor ActQuantizer::forward(const torch::Tensor& x, const Call& call) {
  if (is_identity()) return x;
  if (levels_) return forward_levels(x, call);
  const double qmax = static_cast<double>((int64_t{1} << spec_.bits) - 1);
  torch::Tensor xq;
  if (spec_.per_token) {
    torch::NoGradGuard ng;
    auto xd = x.detach();
    auto mn = xd.amin(-1, true).clamp_max(0), mx = xd.amax(-1, true).clamp_min(0);
    auto scale = ((mx - mn) / qmax).clamp_min(kMinStep);
    auto z = torch::clamp(torch::round(-mn / scale), 0, qmax);
    xq = scale * torch::clamp(torch::round(xd / scale), -z, qmax - z);
    return x + (xq - x).detach();  // straight through: the range always covers the row
  }
  xq = lsq_fake_quant(x, lsq_step(x, qmax, call), -static_cast<double>(zero_point_), qmax - zero_point_);
  return drop(x, xq, call);
}

std::vector<torch::Tensor> ActQuantizer::parameters() {
  if (is_identity() || spec_.per_token || !step_.defined()) return {};
  return {step_};
}

float ActQuantizer::step() const { return step_.defined() ? std::max(std::abs(step_.item<float>()), float(kMinStep)) : 0.f; }

float ActQuantizer::zero_point() const { return zero_point_; }

}  // namespace flexquant
