#include "flexquant/adam.h"

#include <cmath>

#include "flexquant/error.h"
#include "flexquant/simd.h"

namespace flexquant {
namespace {

// PyTorch's order: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps).
FQ_VECTOR_CLONES void adam_update(float* __restrict p, float* __restrict m, float* __restrict v,
                                  const float* __restrict g, int64_t n, float b1, float b2, float inv_sqrt_bc2,
                                  float eps, float step_size) {
  const float a1 = 1.0f - b1, a2 = 1.0f - b2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    m[i] = m[i] * b1 + a1 * gi;
    v[i] = v[i] * b2 + a2 * gi * gi;
    p[i] -= step_size * (m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps));
  }
}

}  // namespace

FusedAdam::FusedAdam(std::vector<Group> groups, double beta1, double beta2, double eps)
    : groups_(std::move(groups)), beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (const Group& g : groups_) {
    std::vector<State> s(g.params.size());
    for (size_t i = 0; i < g.params.size(); ++i) {
      FQ_CHECK(g.params[i].is_leaf() && g.params[i].requires_grad(), ConfigError,
               "FusedAdam: parameter ", i, " is not a leaf tensor that requires grad");
      s[i].exp_avg = torch::zeros_like(g.params[i], torch::MemoryFormat::Contiguous);
      s[i].exp_avg_sq = torch::zeros_like(g.params[i], torch::MemoryFormat::Contiguous);
    }
    state_.push_back(std::move(s));
  }
}

void FusedAdam::zero_grad() {
  for (Group& g : groups_)
    for (torch::Tensor& p : g.params) p.mutable_grad().reset();
}

void FusedAdam::step() {
  torch::NoGradGuard ng;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const double lr = groups_[gi].lr;
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      torch::Tensor& p = groups_[gi].params[i];
      const torch::Tensor& grad = p.grad();
      if (!grad.defined()) continue;
      State& s = state_[gi][i];
      ++s.step;
      const double bc1 = 1 - std::pow(beta1_, static_cast<double>(s.step));
      const double bc2 = 1 - std::pow(beta2_, static_cast<double>(s.step));
      const double step_size = lr / bc1;
      if (p.is_cpu() && p.scalar_type() == torch::kFloat && p.is_contiguous()) {
        const torch::Tensor g = grad.contiguous();
        adam_update(p.data_ptr<float>(), s.exp_avg.data_ptr<float>(), s.exp_avg_sq.data_ptr<float>(),
                    g.data_ptr<float>(), p.numel(), static_cast<float>(beta1_), static_cast<float>(beta2_),
                    static_cast<float>(1 / std::sqrt(bc2)), static_cast<float>(eps_), static_cast<float>(step_size));
        continue;
      }
      // Other devices and dtypes: the same update as whole-tensor ops.
      s.exp_avg.mul_(beta1_).add_(grad, 1 - beta1_);
      s.exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
      p.addcdiv_(s.exp_avg, (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(eps_), -step_size);
    }
  }
}

}  // namespace flexquant
