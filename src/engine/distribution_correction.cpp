#include "flexquant/distribution_correction.h"

#include <torch/autograd.h>

#include <algorithm>
#include <limits>

#include "flexquant/adam.h"
#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace {

constexpr double kStdEps = 1e-6;  // PD-Quant's: inside both square roots
constexpr int64_t kGroupSamples = 128;

// Adds each folded BatchNorm's statistics term, per sample, as the FP unit runs.
class BatchNormStatistics : public UnitContext {
 public:
  torch::Tensor per_sample;  // [N]
  void observe_output(const QuantLayer& layer, int, const torch::Tensor& y) override {
    if (!layer.bn.defined()) return;
    FQ_CHECK(y.dim() >= 3, ModelError, "distribution correction: layer \"", layer.name, "\" has a folded BatchNorm but ",
             "its output ", y.sizes(), " has no spatial positions -> it needs [N, C, ...] outputs");
    const torch::Tensor z = layer.bn.input_from_output(y).flatten(2);  // [N, C, positions]
    const torch::Tensor m = z.mean(2), s = (z.var(2, /*unbiased=*/true) + kStdEps).sqrt();
    const torch::Tensor term = (m - layer.bn.mean).square().sum(1) + (s - (layer.bn.var + kStdEps).sqrt()).square().sum(1);
    per_sample = per_sample.defined() ? per_sample + term : term;
  }
};

torch::Tensor batchnorm_statistics_per_sample(Unit& unit, const torch::Tensor& x) {
  BatchNormStatistics ctx;
  unit.forward(x, ctx);
  return ctx.per_sample.defined() ? ctx.per_sample : torch::zeros({x.size(0)}, x.options());
}

// PyTorch's ReduceLROnPlateau(mode min, factor 0.1, patience 100, threshold 1e-4 relative, min_lr 1e-5).
struct Plateau {
  double lr, best = std::numeric_limits<double>::infinity();
  int64_t bad = 0;
  void step(double metric) {
    if (metric < best * (1 - 1e-4)) best = metric, bad = 0;
    else if (++bad > 100) {
      const double next = std::max(lr * 0.1, 1e-5);
      if (lr - next > 1e-8) lr = next;
      bad = 0;
    }
  }
};

// Batches [b, e) of x's batches: each its own problem (its own Adam group and plateau schedule), all run through one
// forward and backward per step. Each batch's objective is a mean over its samples, so the sum of the batches'
// objectives has, for each batch's x', exactly that batch's gradient, and a wider convolution is cheaper than
// several narrow ones. Adds to out's losses; returns the corrected samples.
torch::Tensor correct_batches(Unit& unit, const torch::Tensor& x0, const DistributionCorrection& opt,
                              CorrectedInput& out) {
  std::vector<torch::Tensor> xs;
  std::vector<FusedAdam::Group> groups;
  std::vector<int64_t> batch_of;  // sample -> batch
  for (int64_t b = 0; b < x0.size(0); b += opt.batch) {
    xs.push_back(x0.slice(0, b, std::min(b + opt.batch, x0.size(0))).clone().requires_grad_(true));
    groups.push_back({{xs.back()}, opt.lr});
    batch_of.insert(batch_of.end(), xs.back().size(0), static_cast<int64_t>(xs.size()) - 1);
  }
  const int64_t nb = static_cast<int64_t>(xs.size());
  const torch::Tensor owner = torch::tensor(batch_of, torch::kLong).to(x0.device());
  const torch::Tensor counts = torch::bincount(owner, {}, nb).to(x0.scalar_type());
  // Each batch's objective: the mean over its samples of statistics + lp(x', x) / lambda_c ([nb]).
  auto objectives = [&] {
    const torch::Tensor xc = torch::cat(xs, 0);
    torch::Tensor per = batchnorm_statistics_per_sample(unit, xc);
    const torch::Tensor d2 = (xc - x0).square().sum(1);  // lp: squares summed over dim 1, mean over the rest
    per = per + (d2.dim() > 1 ? d2.flatten(1).mean(1) : d2) / opt.lambda_c;
    return torch::zeros({nb}, per.options()).index_add(0, owner, per) / counts;
  };
  FusedAdam adam(groups);
  std::vector<Plateau> plateau(nb, Plateau{opt.lr});
  for (int64_t it = 0; it < opt.iters; ++it) {
    throw_if_stop_requested(detail::concat("in the distribution correction of unit \"", unit.name(), "\" at step ", it,
                                           "/", opt.iters));
    const torch::Tensor obj = objectives();
    const auto grads = torch::autograd::grad({obj.sum()}, xs);  // to the x' only, whatever else needs a gradient
    for (int64_t b = 0; b < nb; ++b) xs[b].mutable_grad() = grads[b];
    adam.step();
    const torch::Tensor values = obj.detach().to(torch::kCPU, torch::kDouble).contiguous();
    const double* v = values.data_ptr<double>();
    if (it == 0) out.loss_start += values.sum().item<double>();
    for (int64_t b = 0; b < nb; ++b) {
      plateau[b].step(v[b]);
      adam.set_lr(b, plateau[b].lr);
    }
  }
  torch::NoGradGuard ng;
  out.loss_end += objectives().sum().item<double>();
  return torch::cat(xs, 0).detach();
}

}  // namespace

bool has_batchnorm_statistics(Unit& unit) {
  for (const QuantLayer& l : unit.layers())
    if (l.bn.defined()) return true;
  return false;
}

torch::Tensor batchnorm_statistics_loss(Unit& unit, const torch::Tensor& x) {
  return batchnorm_statistics_per_sample(unit, x).mean();
}

CorrectedInput correct_distribution(Unit& unit, const torch::Tensor& x, const DistributionCorrection& opt) {
  FQ_CHECK(has_batchnorm_statistics(unit), ModelError, "distribution correction: unit \"", unit.name(),
           "\" has no layer with folded BatchNorm statistics -> set pd.dc_iters=0 for this model");
  FQ_CHECK(opt.iters >= 0 && opt.lr > 0 && opt.lambda_c > 0 && opt.batch >= 1, ConfigError,
           "distribution correction: iters ", opt.iters, ", lr ", opt.lr, ", lambda_c ", opt.lambda_c, ", batch ",
           opt.batch, " -> need iters >= 0, lr > 0, lambda_c > 0, batch >= 1");
  CorrectedInput out;
  out.x = x;
  if (opt.iters == 0 || x.size(0) == 0) return out;
  // Whole batches, about kGroupSamples samples at a time: wide enough for the convolutions, small enough that the
  // step's tensors stay in cache (1024 samples at once measured several times slower, mostly page faults).
  const int64_t group = std::max<int64_t>(1, kGroupSamples / opt.batch) * opt.batch;
  const torch::Tensor x0 = x.detach();
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < x0.size(0); b += group) {
    const int64_t e = std::min(b + group, x0.size(0));
    parts.push_back(correct_batches(unit, x0.slice(0, b, e), opt, out));
    if (opt.progress) opt.progress(e, x0.size(0));
  }
  out.x = torch::cat(parts, 0);
  return out;
}

}  // namespace flexquant
