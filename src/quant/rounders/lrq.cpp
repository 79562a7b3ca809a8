// LRQ (Lee et al., arXiv 2407.11534; methods.md §1.6): FlexRound with a low-rank element-wise divisor,
//   log S = delta1 + delta2[Cout,r]·delta3[r,Cin] + delta4[Cout,1] + delta5[1,Cin],
//   q = clamp(⌊W ⊘ exp(log S)⌉, -z, 2^b-1-z),  Ŵ = exp(delta1)·q.
// delta2 = 0 and delta3 ~ Kaiming-uniform(a = √5) so the product starts at 0 while delta2 still gets gradient.
// Conv2d weights are flattened to [Cout, Cin·kh·kw] (delta5 is per flattened input). The map and its gradients
// are FlexRound's fused op with delta2·delta3 as the element term.
#include <torch/nn/init.h>

#include <cmath>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

class LrqRounder : public Rounder {
 public:
  explicit LrqRounder(const RounderOptions& o) : opts_(o) {}
  std::string name() const override { return "lrq"; }

  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    check_weight_finite(w, "weight");
    FQ_CHECK(opts_.lrq_rank >= 1, ConfigError, "lrq.rank ", opts_.lrq_rank, " is not valid -> allowed: >= 1");
    torch::NoGradGuard ng;
    shape_ = w.sizes().vec();
    const int64_t cout = w.size(0), k = w.numel() / cout;
    w2_ = w.detach().to(torch::kFloat).reshape({cout, k}).contiguous();
    spec_ = spec;
    auto opt = w2_.options();
    g_.init(w2_.sizes(), opt, spec, qp, opts_.flexround_learn_s1);
    const int64_t r = std::min({opts_.lrq_rank, cout, k});
    delta2_ = torch::zeros({cout, r}, opt).requires_grad_(true);
    delta3_ = torch::empty({r, k}, opt);
    torch::nn::init::kaiming_uniform_(delta3_, std::sqrt(5.0));  // draws from torch's default generator
    delta3_.requires_grad_(true);
    delta4_ = torch::zeros({cout, 1}, opt).requires_grad_(true);
    delta5_ = torch::zeros({1, k}, opt).requires_grad_(true);
  }

  torch::Tensor forward(bool) override {
    FQ_INTERNAL_ASSERT(w2_.defined(), "lrq rounder used before init()");
    return flexround_quantize(w2_, g_.s1_0, g_.delta1, g_.delta1_0, delta2_.mm(delta3_), delta4_, delta5_, *g_.levels,
                              spec_)
        .reshape(shape_);
  }

  std::vector<torch::Tensor> parameters() override {
    std::vector<torch::Tensor> p;
    if (opts_.flexround_learn_s1) p.push_back(g_.delta1);
    for (auto* t : {&delta2_, &delta3_, &delta4_, &delta5_}) p.push_back(*t);
    return p;
  }

  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w2_.defined(), "lrq rounder used before init()");
    torch::NoGradGuard ng;
    auto m = flex_map(w2_, g_.s1_0, g_.delta1, g_.delta1_0, delta2_.mm(delta3_), delta4_, delta5_, *g_.levels, spec_);
    return flex_harden(m, g_, shape_, spec_, "lrq");
  }

 private:
  RounderOptions opts_;
  WeightQuantSpec spec_;
  FlexGrid g_;
  std::vector<int64_t> shape_;
  torch::Tensor w2_, delta2_, delta3_, delta4_, delta5_;
};

}  // namespace

std::unique_ptr<Rounder> make_lrq(const RounderOptions& opts) { return std::make_unique<LrqRounder>(opts); }

}  // namespace flexquant::rounders
