// PD-Quant's prediction-difference loss (issue #13 item 1): the KL against a direct computation, its gradient, and
// the engine using it (it changes what block reconstruction learns, and the recipe checks its settings).
#include <gtest/gtest.h>

#include <cmath>

#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/reconstruct.h"
#include "engine/workloads.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::resnet20_onnx_workload;
using flexquant::testing::resnet20_workload;
using flexquant::testing::shared_path;
using flexquant::testing::stories_workload;

TEST(PdQuant, PredictionDifferenceIsTheTemperedKlAveragedOverSamples) {
  torch::manual_seed(7);
  const torch::Tensor zp = torch::randn({3, 5}, torch::kFloat64), zq = torch::randn({3, 5}, torch::kFloat64);
  const double t = 4.0;
  double direct = 0;
  for (int i = 0; i < 3; ++i) {
    double sp = 0, sq = 0;
    for (int j = 0; j < 5; ++j) sp += std::exp(zp[i][j].item<double>() / t), sq += std::exp(zq[i][j].item<double>() / t);
    for (int j = 0; j < 5; ++j) {
      const double p = std::exp(zp[i][j].item<double>() / t) / sp, q = std::exp(zq[i][j].item<double>() / t) / sq;
      direct += p * std::log(p / q);
    }
  }
  EXPECT_NEAR(prediction_difference(zp, zq, t).item<double>(), direct / 3, 1e-12);
  EXPECT_EQ(prediction_difference(zp, zp, t).item<double>(), 0.0);
  // Token logits [B, T, V]: every token is a sample.
  EXPECT_NEAR(prediction_difference(zp.view({1, 3, 5}), zq.view({1, 3, 5}), t).item<double>(), direct / 3, 1e-12);
  // Gradient in z_q: (softmax(z_q/T) - softmax(z_fp/T)) / (T * samples).
  const torch::Tensor zq_g = zq.clone().requires_grad_(true);
  prediction_difference(zp, zq_g, t).backward();
  const torch::Tensor expect = (torch::softmax(zq / t, -1) - torch::softmax(zp / t, -1)) / (t * 3);
  EXPECT_LT((zq_g.grad() - expect).abs().max().item<double>(), 1e-12);
  expect_error<ConfigError>([&] { prediction_difference(zp, zq.slice(0, 0, 2), t); }, {"same shape"});
}

TEST(PdQuant, ChangesWhatTheEngineLearnsOnRealResNet20) {
  auto task = make_task(resnet20_workload(0));
  Recipe r;
  r.method = "flexround";
  r.weight_bits = 2;
  r.weight_granularity = "channel";
  r.act_bits = 4;
  r.iters = 20;
  r.calib_samples = 64;
  r.batch = 16;
  const torch::Tensor calib = task->calibration(r);
  auto run = [&](double pd) {
    Recipe x = r;
    x.pd_weight = pd;
    auto model = task->load_model();
    QuantState state;
    quantize(*model, calib, x, state, {}, /*max_units=*/2);
    return state.weights.at("layer1.0.conv1").dequantize();
  };
  const torch::Tensor plain = run(0), again = run(0), pd = run(10);
  EXPECT_TRUE(torch::equal(plain, again)) << "the engine is not deterministic: the comparison below means nothing";
  EXPECT_FALSE(torch::equal(plain, pd)) << "the prediction-difference loss changed nothing";

  Recipe bad = r;
  bad.pd_weight = 10;
  bad.recon_unit = "layer";
  expect_error<ConfigError>([&] { bad.validate(); }, {"recon.unit=block"});
  bad.recon_unit = "block";
  bad.pd_temperature = 0;
  expect_error<ConfigError>([&] { bad.validate(); }, {"pd.temperature"});
}
