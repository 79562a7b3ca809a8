// AdaRound (Nagel et al., ICML 2020; methods.md §2), as in BRECQ/QDrop:
//   W̃ = s·clamp(⌊W/s⌋ + h(V)·(⌈W/s⌉ - ⌊W/s⌋)),  h(V) = clamp(σ(V)(ζ-γ) + γ, 0, 1),  ζ = 1.1, γ = -0.1,
//   where ⌊·⌋/⌈·⌉ are the neighbouring levels of the spec's grid (integers: floor and floor + 1, clamped to
//   [-z, 2^b-1-z]; minifloat and power grids: the levels around W/s, so the step is not uniform),
//   regulariser λ Σ (1 - |2h(V) - 1|^β), off for the first `warmup` of the iterations, then β linear start -> end;
//   hard rounding h = 1[V >= 0]. The grid s (and z) stays fixed.
// V starts at -log((ζ-γ)/(frac-γ) - 1), frac = (W/s - ⌊W/s⌋)/step, so that h(V) = frac (the soft weight equals W);
// its sign is then made to
// agree with round-half-even so the step-0 hard codes are RTN's bit for bit (frac = 0.5 ties and ulp noise).
#include <algorithm>
#include <cmath>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

constexpr double kZeta = 1.1, kGamma = -0.1;

class AdaRoundRounder : public Rounder {
 public:
  explicit AdaRoundRounder(const RounderOptions& o) : opts_(o) {}
  std::string name() const override { return "adaround"; }
  double default_lr() const override { return 1e-3; }

  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    check_weight_finite(w, "weight");
    FQ_CHECK(opts_.adaround_lambda >= 0, ConfigError, "adaround.lambda ", opts_.adaround_lambda,
             " is not valid -> allowed: >= 0");
    FQ_CHECK(opts_.adaround_warmup >= 0 && opts_.adaround_warmup < 1, ConfigError, "adaround.warmup ",
             opts_.adaround_warmup, " is not valid -> allowed: [0, 1)");
    torch::NoGradGuard ng;
    w_ = w.detach().to(torch::kFloat).contiguous();
    spec_ = spec;
    qp_.scale = qp.scale.to(w_.options()).contiguous().clone();
    qp_.zero_point = qp.zero_point.to(w_.options()).contiguous().clone();
    s_ = expand_to_weight(qp_.scale, w_.sizes(), spec_);
    levels_ = std::make_shared<WeightLevels>(weight_levels(spec_, qp_, w_.sizes()));
    auto x = w_ / s_;
    floor_ = levels_->below(x);
    step_ = levels_->above(floor_) - floor_;  // integers: 1, so frac = x - floor is exact
    auto frac = torch::where(step_ > 0, (x - floor_) / step_, torch::zeros_like(x)).clamp(0.0, 1.0);
    auto up = levels_->rounds_up(x, floor_);
    auto v = -torch::log((kZeta - kGamma) / (frac - kGamma) - 1.0);
    v = torch::where(up, v.clamp_min(0.0), torch::where(v >= 0, torch::full_like(v, -1e-6), v));
    v_ = v.requires_grad_(true);
  }

  torch::Tensor h_soft() const { return torch::clamp(torch::sigmoid(v_) * (kZeta - kGamma) + kGamma, 0.0, 1.0); }

  torch::Tensor forward(bool hard) override {
    FQ_INTERNAL_ASSERT(w_.defined(), "adaround rounder used before init()");
    auto h = hard ? (v_ >= 0).to(v_.scalar_type()) : h_soft();
    return s_ * levels_->clamp(floor_ + h * step_);
  }

  std::vector<torch::Tensor> parameters() override { return {v_}; }

  torch::Tensor regularizer(int64_t step, int64_t total) override {
    const double t = static_cast<double>(step), T = static_cast<double>(std::max<int64_t>(total, 1));
    const double warm = opts_.adaround_warmup * T;
    if (t < warm || opts_.adaround_lambda == 0) return torch::zeros({}, v_.options());
    const double beta = beta_at(step, total);
    return opts_.adaround_lambda * (1 - (2 * h_soft() - 1).abs().pow(beta)).sum();
  }

  /// β_t = end + (start - end)·max(0, 1 - (t - warm·T)/((1 - warm)·T))   (methods.md §2)
  double beta_at(int64_t step, int64_t total) const {
    const double T = static_cast<double>(std::max<int64_t>(total, 1));
    const double warm = opts_.adaround_warmup * T;
    const double rel = std::max(0.0, 1.0 - (static_cast<double>(step) - warm) / ((1 - opts_.adaround_warmup) * T));
    return opts_.adaround_beta_end + (opts_.adaround_beta_start - opts_.adaround_beta_end) * rel;
  }

  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w_.defined(), "adaround rounder used before init()");
    torch::NoGradGuard ng;
    const int64_t bad = (~torch::isfinite(v_)).sum().item<int64_t>();
    FQ_CHECK(bad == 0, NumericError, "adaround: ", bad, " of ", v_.numel(), " rounding variables V of weight ",
             w_.sizes(), " are NaN/inf -> allowed: finite -> hint: lower recon.lr");
    auto q = levels_->clamp(floor_ + (v_ >= 0).to(v_.scalar_type()) * step_);
    QuantizedTensor t;
    t.codes = grouped_levels(spec_, qp_).to_codes(to_grouped(q, spec_));
    t.qparams = qp_;
    t.shape = w_.sizes().vec();
    t.spec = spec_;
    return t;
  }

 private:
  RounderOptions opts_;
  WeightQuantSpec spec_;
  QParams qp_;
  std::shared_ptr<WeightLevels> levels_;
  torch::Tensor w_, s_, floor_, step_, v_;
};

}  // namespace

std::unique_ptr<Rounder> make_adaround(const RounderOptions& opts) {
  return std::make_unique<AdaRoundRounder>(opts);
}

}  // namespace flexquant::rounders
