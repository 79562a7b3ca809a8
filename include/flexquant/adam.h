// Adam (Kingma & Ba; PyTorch's update order, no weight decay, no AMSGrad) over parameter groups, each parameter
// updated by one fused loop instead of LibTorch's ~10 whole-tensor ops per parameter: a reconstruction step of a
// small unit updates 10-30 small tensors, and those ops' dispatch cost more than their arithmetic.
// The same numbers as torch::optim::Adam within float rounding (tests/core/test_adam.cpp).
#pragma once
#include <torch/types.h>

#include <vector>

namespace flexquant {

class FusedAdam {
 public:
  struct Group {
    std::vector<torch::Tensor> params;
    double lr = 1e-3;
  };
  explicit FusedAdam(std::vector<Group> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8);
  void set_lr(size_t group, double lr) { groups_.at(group).lr = lr; }
  /// Drops the gradients (undefined, so the next backward writes them instead of adding to zeros).
  void zero_grad();
  /// One update of every parameter that has a gradient.
  void step();

 private:
  struct State {
    torch::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  std::vector<Group> groups_;
  std::vector<std::vector<State>> state_;
  double beta1_, beta2_, eps_;
};

}  // namespace flexquant
