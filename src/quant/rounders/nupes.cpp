// NUPES (Yvinec et al. 2023; methods.md §5): FlexRound on a power-exponent grid whose exponent is learned.
//   u = sign(w)|w|^a  ->  û = FlexRound(u) on the symmetric integer grid  ->  ŵ = sign(û)|û|^(1/a)
// so ŵ lies on the power grid pow<b>_a<1/a>_full with scale s1^(1/a): levels sign(q)|q|^(1/a) crowd toward zero
// for a < 1, where bell-shaped weights are dense. a (one per layer, a = exp(rate * theta)) trains with the divisors;
// since the transform comes before the divisors, every weight may still move to any level of the range.
// The index range is int<b>'s, -2^(b-1)..2^(b-1)-1, not PowerQuant's -(2^(b-1)-1)..: a b-bit code then holds as
// many levels as the integer grid it replaces (at W2 the symmetric range is {-1, 0, 1}, where a has no effect).
// Written as u = w * |w|^(a-1) and ŵ = û * |û|^(1/a - 1), so that at a = 1 both maps are the identity bit for bit
// (x^0 = 1) with unit gradients: NUPES at a = 1 is FlexRound on the same integer grid, step for step.
#include <cmath>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant {
namespace rounders {
namespace {

constexpr double kTiny = 1e-30;  // |x| floor inside the powers: 0 * tiny^e is 0 for any exponent we use

torch::Tensor power_map(const torch::Tensor& x, const torch::Tensor& e) {
  return x * x.abs().clamp_min(kTiny).pow(e - 1);
}

WeightQuantSpec power_spec(const WeightQuantSpec& spec, double exponent) {
  WeightQuantSpec s = spec;
  s.format = Format(PowFormat{spec.bits(), exponent, /*full=*/true});
  return s;
}

class NupesRounder : public Rounder {
 public:
  explicit NupesRounder(const RounderOptions& o) : opts_(o) {}
  std::string name() const override { return "nupes"; }
  double default_lr() const override { return 3e-3; }

  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams&) override {
    check_weight_finite(w, "weight");
    FQ_CHECK(spec.format.is_int(), ConfigError, "nupes learns its own power grid at weight.bits; weight.format is ",
             spec.format.name(), " -> set weight.format=int");
    FQ_CHECK(spec.symmetric, ConfigError, "nupes rounds onto a symmetric power grid -> set weight.symmetric=true");
    FQ_CHECK(spec.scale_dtype == ScaleDtype::Fp32, ConfigError, "nupes learns fp32 scales (its grid has no "
             "runtime block format) -> set weight.scale_dtype=fp32");
    torch::NoGradGuard ng;
    w_ = w.detach().to(torch::kFloat).contiguous();
    spec_ = spec;
    const double a0 = initial_exponent();
    rate_ = opts_.option("nupes.a_rate");
    FQ_CHECK(rate_ > 0 && std::isfinite(rate_), ConfigError, "nupes.a_rate ", rate_, " -> allowed: > 0");
    theta_ = torch::full({}, std::log(a0) / rate_, w_.options()).requires_grad_(opts_.option("nupes.learn_a") != 0);
    const torch::Tensor u = power_map(w_, torch::full({}, a0, w_.options()));
    p_.init(u, spec_, init_qparams(u, spec_), opts_);
  }

  torch::Tensor forward(bool hard) override {
    FQ_INTERNAL_ASSERT(w_.defined(), "nupes rounder used before init()");
    if (hard) {
      torch::NoGradGuard ng;
      return harden().dequantize();  // exactly what harden() exports
    }
    const torch::Tensor a = exponent();
    const torch::Tensor u = power_map(w_, a);
    return power_map(p_.quantize(u, spec_), 1 / a);
  }

  std::vector<torch::Tensor> parameters() override {
    std::vector<torch::Tensor> p = p_.parameters(opts_);
    if (theta_.requires_grad()) p.push_back(theta_);
    return p;
  }

  // The codes on pow<b>_a<1/a>_full with scale s1^(1/a): the nearest level of ŵ there is the level q FlexRound
  // chose.
  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w_.defined(), "nupes rounder used before init()");
    torch::NoGradGuard ng;
    const double a = exponent().item<double>();
    FQ_CHECK(std::isfinite(a) && a > 0, NumericError, "nupes: the learned exponent became ", a,
             " -> allowed: finite and > 0; hint: lower recon.lr");
    const torch::Tensor at = torch::full({}, a, w_.options());
    FlexMap m = p_.map(power_map(w_, at), spec_);
    (void)flex_harden(m, p_.grid, w_.sizes(), spec_, "nupes");  // the validity checks of the learned grid
    const WeightQuantSpec out_spec = power_spec(spec_, 1 / a);
    QParams qp;
    qp.scale = m.s1p.pow(1 / a);
    qp.zero_point = torch::zeros_like(qp.scale);
    return quantize_rtn(power_map(m.out, 1 / at), out_spec, qp);
  }

 private:
  // nupes.a_init > 0: that exponent; 0: PowerQuant's data-free choice, the a of {1, 0.9, ..., 0.5} whose
  // round-to-nearest on the initial grid reconstructs w with the least L2.4 error.
  double initial_exponent() const {
    const double a_init = opts_.option("nupes.a_init");
    FQ_CHECK(a_init >= 0 && std::isfinite(a_init), ConfigError, "nupes.a_init ", a_init,
             " -> allowed: 0 (search) or an exponent > 0");
    if (a_init > 0) return a_init;
    double best_a = 1, best_err = INFINITY;
    for (int i = 10; i >= 5; --i) {
      const double a = i / 10.0;
      const torch::Tensor at = torch::full({}, a, w_.options());
      const torch::Tensor u = power_map(w_, at);
      const double err = lp_error(power_map(fake_quant_rtn(u, spec_, init_qparams(u, spec_)), 1 / at), w_);
      if (err < best_err) best_err = err, best_a = a;
    }
    return best_a;
  }

  // a = exp(rate * theta): Adam moves theta by about lr per step whatever its gradient, so the rate sets how fast the
  // one exponent of the whole layer moves against the per-weight divisors.
  torch::Tensor exponent() const { return torch::exp(theta_ * rate_); }

  RounderOptions opts_;
  WeightQuantSpec spec_;
  FlexParams p_;
  torch::Tensor w_, theta_;
  double rate_ = 1;
};

}  // namespace

std::unique_ptr<Rounder> make_nupes(const RounderOptions& opts) { return std::make_unique<NupesRounder>(opts); }

}  // namespace rounders
}  // namespace flexquant
