// Tests of the weight-quantization primitives (include/flexquant/quantizer.h): grouped view, initial grids
// (hand-computed MinMax, MSE never worse than MinMax on the real ResNet-20 weights, search speed), zero groups,
// non-finite weights, and QuantizedTensor round trips.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "flexquant/error.h"
#include "flexquant/quantizer.h"
#include "flexquant/runtime.h"
#include "flexquant/safetensors.h"
#include "quant/quant_test_util.h"
#include "test_data.h"

namespace fq = flexquant;

using flexquant::testing::make_spec;

namespace {


// Every conv / linear weight of the real ResNet-20 (CIFAR-10), in file order.
const std::vector<std::pair<std::string, torch::Tensor>>& resnet20_weights() {
  static std::vector<std::pair<std::string, torch::Tensor>> ws = [] {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    auto f = fq::load_safetensors(fq::testing::shared_path("data/cifar10/resnet20.safetensors"));
    for (auto& n : f.names) {
      auto& t = f.at(n);
      if (n.size() > 7 && n.substr(n.size() - 7) == ".weight" && t.dim() >= 2) out.emplace_back(n, t);
    }
    return out;
  }();
  return ws;
}

}  // namespace

TEST(Quantizer, GroupedViewRoundTripWithPadding) {
  int checked = 0;
  struct Case { std::vector<int64_t> shape; fq::Granularity g; int64_t gs; std::vector<int64_t> grouped; };
  std::vector<Case> cases = {
      {{5, 172}, fq::Granularity::PerGroup, 32, {5, 6, 32}},        // 172 = 5*32 + 12: 20 padded zeros per row
      {{4, 3, 3, 3}, fq::Granularity::PerGroup, 8, {4, 4, 8}},      // conv K = 27 -> 4 groups of 8
      {{4, 3, 3, 3}, fq::Granularity::PerChannel, 0, {4, 1, 27}},
      {{6, 10}, fq::Granularity::PerTensor, 0, {6, 1, 10}},
      {{3, 7}, fq::Granularity::PerGroup, 128, {3, 1, 7}},          // group size capped at the row length
  };
  torch::manual_seed(0);
  for (auto& c : cases) {
    auto spec = make_spec(4, false, c.g, c.gs, fq::ScaleInit::MinMax);
    auto w = torch::randn(c.shape);
    auto wg = fq::to_grouped(w, spec);
    ASSERT_EQ(wg.sizes().vec(), c.grouped);
    const int64_t k = w.numel() / c.shape[0];
    auto flat = wg.reshape({c.shape[0], -1});
    EXPECT_TRUE(torch::equal(flat.narrow(1, 0, k), w.reshape({c.shape[0], k})));
    if (flat.size(1) > k) {
      EXPECT_EQ(flat.narrow(1, k, flat.size(1) - k).abs().sum().item<float>(), 0.f);
    }
    EXPECT_TRUE(torch::equal(fq::from_grouped(wg, w.sizes()), w));
    // expand_to_weight / reduce_to_param are adjoint broadcasts of a grouped-view parameter.
    auto l = fq::group_layout(w.sizes(), spec);
    auto p = torch::randn(l.param_shape(c.g));
    auto full = fq::expand_to_weight(p, w.sizes(), spec);
    ASSERT_EQ(full.sizes(), w.sizes());
    auto f2 = full.reshape({c.shape[0], k});
    int mismatches = 0;
    for (int64_t o = 0; o < c.shape[0]; ++o)
      for (int64_t j = 0; j < k; ++j)
        mismatches += f2[o][j].item<float>() != p[p.size(0) == 1 ? 0 : o][p.size(1) == 1 ? 0 : j / l.group][0].item<float>();
    EXPECT_EQ(mismatches, 0);
    auto ones = torch::ones_like(w);
    auto counts = fq::reduce_to_param(ones, p.sizes(), spec);
    EXPECT_EQ(counts.sum().item<float>(), static_cast<float>(w.numel()));
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(Quantizer, PerGroupMinMaxIsExactOnHandMadeTensor) {
  // Row 0: group A mixed signs, group B positive only. Row 1: group C negative only, group D all zero.
  auto w = torch::tensor({-1.f, 0.5f, 2.f, 3.f, 1.f, 2.f, 3.f, 4.f,   //
                          -4.f, -2.f, -1.f, -3.f, 0.f, 0.f, 0.f, 0.f}).reshape({2, 8});
  auto spec = make_spec(4, false, fq::Granularity::PerGroup, 4, fq::ScaleInit::MinMax);
  auto qp = fq::init_qparams(w, spec);
  ASSERT_EQ(qp.scale.sizes().vec(), (std::vector<int64_t>{2, 2, 1}));
  const float s = 4.f / 15.f;  // every non-zero group spans 4
  auto sc = qp.scale.reshape(-1), zp = qp.zero_point.reshape(-1);
  EXPECT_EQ(sc[0].item<float>(), s);
  EXPECT_EQ(sc[1].item<float>(), s);
  EXPECT_EQ(sc[2].item<float>(), s);
  EXPECT_EQ(sc[3].item<float>(), 1e-8f);                 // all-zero group: the scale floor
  EXPECT_EQ(zp[0].item<float>(), std::nearbyint(1.f / s));  // -round(-1/s) = round(3.75) = 4
  EXPECT_EQ(zp[0].item<float>(), 4.f);
  EXPECT_EQ(zp[1].item<float>(), 0.f);                   // min forced to 0
  EXPECT_EQ(zp[2].item<float>(), 15.f);                  // max forced to 0: z = 15
  EXPECT_EQ(zp[3].item<float>(), 0.f);
  // RTN values by hand: group A: q = clamp(round(w/s), -4, 11).
  auto wq = fq::fake_quant_rtn(w, spec, qp);
  EXPECT_EQ(wq[0][0].item<float>(), s * -4.f);           // -1/s = -3.75 -> -4
  EXPECT_EQ(wq[0][1].item<float>(), s * 2.f);            // 0.5/s = 1.875 -> 2
  EXPECT_EQ(wq[0][3].item<float>(), s * 11.f);           // 3/s = 11.25 -> 11
  EXPECT_EQ(wq[1][4].item<float>(), 0.f);
  // Symmetric: scale = 2 max|w| / 15, codes -8..7 (z = 8).
  auto sym = make_spec(4, true, fq::Granularity::PerGroup, 4, fq::ScaleInit::MinMax);
  auto qs = fq::init_qparams(w, sym);
  EXPECT_EQ(qs.scale.reshape(-1)[0].item<float>(), 3.f * 2.f / 15.f);
  EXPECT_EQ(qs.scale.reshape(-1)[2].item<float>(), 4.f * 2.f / 15.f);
  EXPECT_EQ(qs.zero_point.reshape(-1)[1].item<float>(), 8.f);
  auto ws = fq::fake_quant_rtn(w, sym, qs);
  EXPECT_EQ(ws[1][1].item<float>(), -4.f * (8.f / 15.f));  // -2/(8/15) = -3.75 -> -4
  EXPECT_EQ(ws[0][7].item<float>(), 7.f * (8.f / 15.f));   // 4/(8/15) = 7.5 -> 8, clamped to 7
  // Per-tensor and per-channel reduce over the right axes.
  auto pt = fq::init_qparams(w, make_spec(4, false, fq::Granularity::PerTensor, 0, fq::ScaleInit::MinMax));
  EXPECT_EQ(pt.scale.item<float>(), 8.f / 15.f);
  auto pc = fq::init_qparams(w, make_spec(4, false, fq::Granularity::PerChannel, 0, fq::ScaleInit::MinMax));
  EXPECT_EQ(pc.scale[0].item<float>(), 5.f / 15.f);
  EXPECT_EQ(pc.scale[1].item<float>(), 4.f / 15.f);
}

TEST(Quantizer, ZeroGroupsGiveNoNaN) {
  auto w = torch::randn({4, 40});
  w[1].zero_();
  w[3].slice(0, 0, 16).zero_();
  int checked = 0;
  for (auto g : {fq::Granularity::PerTensor, fq::Granularity::PerChannel, fq::Granularity::PerGroup})
    for (bool sym : {false, true})
      for (auto init : {fq::ScaleInit::MinMax, fq::ScaleInit::Mse}) {
        auto spec = make_spec(3, sym, g, 16, init);
        for (auto& x : {w, torch::zeros({4, 40})}) {
          auto qp = fq::init_qparams(x, spec);
          EXPECT_TRUE(torch::isfinite(qp.scale).all().item<bool>());
          EXPECT_TRUE((qp.scale > 0).all().item<bool>());
          auto wq = fq::fake_quant_rtn(x, spec, qp);
          EXPECT_TRUE(torch::isfinite(wq).all().item<bool>());
          EXPECT_EQ(wq[1].abs().sum().item<float>(), 0.f) << "zero row must stay zero";
          ++checked;
        }
      }
  EXPECT_EQ(checked, 24);
}

TEST(Quantizer, NonFiniteWeightThrowsNumericError) {
  auto w = torch::randn({3, 4});
  w[1][2] = NAN;
  w[2][0] = INFINITY;
  auto spec = make_spec(4, false, fq::Granularity::PerChannel, 0, fq::ScaleInit::Mse);
  try {
    fq::init_qparams(w, spec);
    FAIL() << "expected NumericError";
  } catch (const fq::NumericError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("[3, 4]"), std::string::npos) << m;
    EXPECT_NE(m.find("1 NaN and 1 inf"), std::string::npos) << m;
    EXPECT_NE(m.find("flat index 6"), std::string::npos) << m;
  }
  EXPECT_THROW(fq::fake_quant_rtn(w, spec, fq::init_qparams(torch::ones({3, 4}), spec)), fq::NumericError);
  EXPECT_THROW(fq::parse_granularity("row"), fq::ConfigError);
  EXPECT_THROW(fq::parse_scale_init("percentile"), fq::ConfigError);
  EXPECT_EQ(fq::parse_granularity(fq::to_string(fq::Granularity::PerGroup)), fq::Granularity::PerGroup);
  EXPECT_THROW(fq::init_qparams(torch::ones({3, 4}), make_spec(9, false, fq::Granularity::PerTensor, 0, fq::ScaleInit::Mse)),
               fq::ConfigError);
}

// MSE init must never be worse than MinMax in L2.4 error, and must be strictly better somewhere (else the
// search is not running). Real ResNet-20 weights, every layer.
TEST(Quantizer, MseInitNeverWorseThanMinMaxOnResNet20) {
  const auto& ws = resnet20_weights();
  ASSERT_EQ(ws.size(), 20u);  // 19 convs + the classifier
  int checked = 0, better = 0, layers = 0;
  double worst_ratio = 0;
  for (auto& [name, w] : ws) {
    // Stages 1-2 and the classifier (<= 9,216 weights): the 64-channel convs make the brute-force
    // per-tensor 2-D search take most of a minute, which buys no extra coverage.
    if (w.numel() > 10000) continue;
    ++layers;
    for (int bits : {2, 3})
      for (bool sym : {false, true})
        for (auto g : {fq::Granularity::PerTensor, fq::Granularity::PerChannel, fq::Granularity::PerGroup}) {
          auto mm = make_spec(bits, sym, g, 16, fq::ScaleInit::MinMax);
          auto ms = make_spec(bits, sym, g, 16, fq::ScaleInit::Mse);
          const double e_mm = fq::lp_error(fq::fake_quant_rtn(w, mm, fq::init_qparams(w, mm)), w);
          const double e_ms = fq::lp_error(fq::fake_quant_rtn(w, ms, fq::init_qparams(w, ms)), w);
          EXPECT_LE(e_ms, e_mm * (1 + 1e-5)) << name << " bits " << bits << " sym " << sym << " " << fq::to_string(g);
          worst_ratio = std::max(worst_ratio, e_ms / e_mm);
          better += e_ms < 0.99 * e_mm;
          ++checked;
        }
  }
  EXPECT_EQ(layers, 14);  // conv1, 6 stage-1 convs, 6 stage-2 convs (the first 16->32 one too), linear
  EXPECT_EQ(checked, layers * 2 * 2 * 3);
  EXPECT_GT(better, checked / 2) << "MSE search rarely improves on MinMax";
  RecordProperty("mse_better_cases", better);
  std::printf("[ MSE init ] %d/%d cases >1%% better than MinMax; worst MSE/MinMax L2.4 ratio %.6f\n", better, checked,
              worst_ratio);
}

TEST(Quantizer, MseSearchIsFast) {
  torch::manual_seed(1);
  auto w = torch::randn({768, 288}) * 0.02;
  auto spec = make_spec(4, false, fq::Granularity::PerChannel, 0, fq::ScaleInit::Mse);
  fq::Stopwatch sw;
  auto qp = fq::init_qparams(w, spec);
  const double t = sw.seconds();
  std::printf("[ MSE init ] 4-bit asymmetric per-channel [768, 288]: %.3f s\n", t);
  // Speed is a benchmark matter (docs/RESULTS.md), not a timed test; this checks the shape only.
  EXPECT_EQ(qp.scale.sizes().vec(), (std::vector<int64_t>{768, 1, 1}));
}

TEST(Quantizer, QuantizedTensorDequantizesToFakeQuantBitwise) {
  int checked = 0;
  for (auto& [name, w] : resnet20_weights()) {
    for (auto g : {fq::Granularity::PerTensor, fq::Granularity::PerChannel, fq::Granularity::PerGroup}) {
      auto spec = make_spec(3, g == fq::Granularity::PerTensor, g, 32, fq::ScaleInit::Mse);
      auto qp = fq::init_qparams(w, spec);
      auto qt = fq::quantize_rtn(w, spec, qp);
      ASSERT_EQ(qt.codes.scalar_type(), torch::kUInt8);
      EXPECT_LE(qt.codes.max().item<int>(), 7);
      EXPECT_TRUE(torch::equal(qt.dequantize(), fq::fake_quant_rtn(w, spec, qp))) << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 60);
}
