// FusedAdam against torch::optim::Adam: the same trajectory within float rounding on a least-squares problem
// with two parameter groups, a changing learning rate and a parameter that skips steps (no gradient).
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/torch.h>

#include "flexquant/adam.h"

using namespace flexquant;

TEST(FusedAdam, FollowsTorchAdamWithinFloatRounding) {
  torch::manual_seed(11);
  const auto a = torch::randn({64, 37}), y = torch::randn({64, 5});
  auto make = [] {
    torch::manual_seed(12);
    return std::vector<torch::Tensor>{torch::randn({37, 5}).requires_grad_(true), torch::randn({5}).requires_grad_(true),
                                      torch::randn({1}).requires_grad_(true)};
  };
  auto pt = make(), pf = make();
  torch::optim::Adam ref({torch::optim::OptimizerParamGroup({pt[0], pt[1]}, std::make_unique<torch::optim::AdamOptions>(3e-2)),
                          torch::optim::OptimizerParamGroup({pt[2]}, std::make_unique<torch::optim::AdamOptions>(1e-2))},
                         torch::optim::AdamOptions(3e-2));
  FusedAdam fused({{{pf[0], pf[1]}, 3e-2}, {{pf[2]}, 1e-2}});
  auto loss = [&](const std::vector<torch::Tensor>& p, int it) {
    auto l = (torch::matmul(a, p[0]) + p[1] - y).pow(2).mean();
    return it % 3 == 0 ? l : l + p[2].pow(2).sum();  // p[2] has no gradient every third step
  };
  for (int it = 0; it < 200; ++it) {
    const double lr = 3e-2 * 0.5 * (1 + std::cos(M_PI * it / 200));
    static_cast<torch::optim::AdamOptions&>(ref.param_groups()[0].options()).lr(lr);
    fused.set_lr(0, lr);
    ref.zero_grad();
    fused.zero_grad();
    if (it % 3 == 0) {  // torch skips parameters whose gradient is undefined, as FusedAdam does
      for (auto& p : pt) p.mutable_grad().reset();
    }
    loss(pt, it).backward();
    ref.step();
    loss(pf, it).backward();
    fused.step();
  }
  for (size_t i = 0; i < pt.size(); ++i) {
    const double err = (pt[i] - pf[i]).abs().max().item<double>();
    EXPECT_LE(err, 1e-5 * std::max(1.0, pt[i].abs().max().item<double>())) << "parameter " << i;
  }
  EXPECT_FALSE(torch::equal(pf[0], make()[0])) << "the parameters moved";
}
