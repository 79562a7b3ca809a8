// Multipoint quantization (methods.md §6; Liu et al., AAAI 2021): each output channel's row is a sum of points on
// one low-bit grid, w_c ≈ Σ_i a_ci v_ci. Point 1 is round-to-nearest on the recipe's grid (so one point is RTN bit
// for bit); each further point fits the residual on the same grid with its own per-channel scale, the least-squares
// best of a fixed candidate set. The layer's budget of points is then spent greedily where one more point cuts a
// channel's output error e_c = d_c^T H d_c the most (d_c the row's quantization error, H = X^T X / rows the layer's
// input Hessian, which the registry entry asks the engine for). Nothing is trained; forward is the dequantized sum.
#include <cmath>
#include <queue>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

constexpr int kScaleCandidates = 100;  // candidate scales k/80 * (max-range scale), k = 1..100: 0.0125x .. 1.25x

// Output error of every row of d ([Cout, K] after flattening) under H: d_c^T H d_c, in float64.
torch::Tensor row_output_errors(const torch::Tensor& d, const torch::Tensor& H) {
  auto dd = d.reshape({d.size(0), -1}).to(torch::kDouble);
  return (dd.mm(H.to(torch::kDouble)) * dd).sum(1);
}

// The grid of the further points: the recipe's levels, symmetric, one scale per output channel.
WeightQuantSpec term_spec(const WeightQuantSpec& spec) {
  WeightQuantSpec t = spec;
  t.symmetric = true;
  t.granularity = Granularity::PerChannel;
  t.init = ScaleInit::MinMax;
  return t;
}

// One further point for residual r: per channel, the candidate with the least squared error. Candidates: scales
// k/80 of the max-range scale, k = 1..100, and for integer grids both orientations of the symmetric code range
// (zero point 2^(b-1): levels -2^(b-1)..2^(b-1)-1, or 2^(b-1)-1: one more level up than down). A residual is
// symmetric, and with one orientation only a 2-bit point has a single positive level: the paper's symmetric
// 2^b - 1 levels plus the one extra code an unsigned b-bit code has room for.
QuantizedTensor fit_residual(const torch::Tensor& r, const WeightQuantSpec& ts) {
  QParams qp = init_qparams(r, ts);  // zero point, and the max-range scale the candidates are fractions of
  const torch::Tensor base = qp.scale;
  std::vector<torch::Tensor> zero_points{qp.zero_point};
  if (ts.integer()) zero_points.push_back(qp.zero_point - 1);
  torch::Tensor best_err, best_scale, best_zp;
  for (const auto& zp : zero_points)
    for (int k = 1; k <= kScaleCandidates; ++k) {
      QParams c{stored_scale(base * (k / 80.0), ts), zp, {}};
      auto err = (fake_quant_rtn(r, ts, c) - r).reshape({r.size(0), -1}).to(torch::kDouble).square().sum(1);
      if (!best_err.defined()) {
        best_err = err, best_scale = c.scale.clone(), best_zp = zp.clone();
        continue;
      }
      auto better = (err < best_err).reshape(best_scale.sizes());
      best_scale = torch::where(better, c.scale, best_scale);
      best_zp = torch::where(better, zp, best_zp);
      best_err = torch::minimum(err, best_err);
    }
  qp.scale = best_scale;
  qp.zero_point = best_zp;
  return quantize_rtn(r, ts, qp);
}

// Points per channel: every channel has 1; `extra` more go one at a time to the channel whose next point cuts its
// output error the most (err[n][c]: channel c's error with n+1 points), while that cut is positive.
std::vector<int> allocate_points(const std::vector<torch::Tensor>& err, int64_t extra) {
  const int64_t cout = err.front().size(0);
  std::vector<std::vector<double>> e(err.size());
  for (size_t n = 0; n < err.size(); ++n) {
    auto c = err[n].contiguous();
    e[n].assign(c.data_ptr<double>(), c.data_ptr<double>() + cout);
  }
  std::vector<int> points(cout, 1);
  using Gain = std::pair<double, int64_t>;
  std::priority_queue<Gain> heap;
  auto push = [&](int64_t c) {
    if (points[c] < static_cast<int>(err.size())) heap.push({e[points[c] - 1][c] - e[points[c]][c], c});
  };
  for (int64_t c = 0; c < cout; ++c) push(c);
  for (; extra > 0 && !heap.empty() && heap.top().first > 0; --extra) {
    int64_t c = heap.top().second;
    heap.pop();
    ++points[c];
    push(c);
  }
  return points;
}

class MultipointRounder : public HessianRounder {
 public:
  explicit MultipointRounder(const RounderOptions& o)
      : points_(o.option("multipoint.points")), max_points_(o.option("multipoint.max_points")) {}
  std::string name() const override { return "multipoint"; }
  using HessianRounder::init;
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats& stats) override {
    check_options(spec);
    check_stats(stats);
    check_weight_finite(w, "weight");
    torch::NoGradGuard ng;
    const auto wf = w.detach().to(torch::kFloat);
    QuantizedTensor q = quantize_rtn(wf, spec, qp);
    auto approx = q.dequantize().to(wf.device());
    std::vector<torch::Tensor> err{row_output_errors(wf - approx, stats.hessian).cpu()};
    std::vector<QuantizedTensor> terms;
    const WeightQuantSpec ts = term_spec(spec);
    for (int n = 1; n < static_cast<int>(max_points_); ++n) {
      terms.push_back(fit_residual(wf - approx, ts));
      approx = approx + terms.back().dequantize().to(wf.device());
      err.push_back(row_output_errors(wf - approx, stats.hessian).cpu());
    }
    const int64_t cout = wf.size(0);
    const auto points = allocate_points(err, std::llround((points_ - 1.0) * static_cast<double>(cout)));
    q.terms = used_terms(std::move(terms), points);
    set_codes(std::move(q), wf.device());
  }

 private:
  void check_options(const WeightQuantSpec& spec) const {
    FQ_CHECK(max_points_ >= 1 && max_points_ <= 8 && max_points_ == std::floor(max_points_), ConfigError,
             "multipoint.max_points = ", max_points_, " -> allowed: an integer 1..8");
    FQ_CHECK(points_ >= 1 && points_ <= max_points_, ConfigError, "multipoint.points = ", points_,
             " -> allowed: 1 .. multipoint.max_points (", max_points_, "); the average points per output channel");
    FQ_CHECK(spec.scale_dtype != ScaleDtype::KQuant, ConfigError, "multipoint: weight.scale_dtype=kquant is one "
             "grid per super-block; a sum of points has no k-quant encoding -> use weight.scale_dtype=fp32 or fp16");
  }
  // Term i is used on the channels given more than i+1 points: the others get scale 0; unused tails are dropped.
  static std::vector<QuantizedTensor> used_terms(std::vector<QuantizedTensor> terms, const std::vector<int>& points) {
    auto n = torch::tensor(std::vector<int64_t>(points.begin(), points.end()));
    std::vector<QuantizedTensor> out;
    for (size_t i = 0; i < terms.size(); ++i) {
      auto used = (n > static_cast<int64_t>(i) + 1).to(terms[i].qparams.scale.device());
      if (!used.any().item<bool>()) break;
      auto& s = terms[i].qparams.scale;
      s = torch::where(used.reshape(s.sizes()), s, torch::zeros_like(s));
      out.push_back(std::move(terms[i]));
    }
    return out;
  }
  double points_, max_points_;
};

}  // namespace

std::unique_ptr<Rounder> make_multipoint(const RounderOptions& opts) {
  return std::make_unique<MultipointRounder>(opts);
}

}  // namespace flexquant::rounders
