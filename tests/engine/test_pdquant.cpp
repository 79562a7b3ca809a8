// PD-Quant (issue #13 item 1). The prediction-difference loss: the KL against a direct computation, its gradient, and
// the engine using it. The distribution correction: its BatchNorm statistics against the unfolded BatchNorms of the
// real ResNet-20, its steps, its batches, and the engine using it. Each changes what block reconstruction learns, and
// the recipe checks their settings.
#include <gtest/gtest.h>

#include <torch/nn/functional/batchnorm.h>

#include <cmath>

#include "flexquant/distribution_correction.h"
#include "flexquant/equalize.h"
#include "flexquant/error.h"
#include "flexquant/safetensors.h"
#include "flexquant/pipeline.h"
#include "flexquant/reconstruct.h"
#include "flexquant/runtime.h"
#include "engine/workloads.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::resnet20_onnx_workload;
using flexquant::testing::resnet20_workload;
using flexquant::testing::shared_path;
using flexquant::testing::stories_workload;

namespace {

// A short ResNet-20 W2A4 FlexRound run on 64 calibration images.
Recipe short_w2a4_recipe() {
  Recipe r;
  r.method = "flexround";
  r.weight_bits = 2;
  r.weight_granularity = "channel";
  r.act_bits = 4;
  r.calib_samples = 64;
  r.batch = 16;
  return r;
}

}  // namespace

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
  Recipe r = short_w2a4_recipe();
  r.iters = 20;
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

namespace {

// The real ResNet-20's first block and its input on real CIFAR-10 images (the stem's FP output).
struct Block {
  std::unique_ptr<ModelAdapter> model;
  Unit* unit = nullptr;
  torch::Tensor x;
};

Block first_block(int64_t images) {
  auto task = make_task(resnet20_workload(0));
  Recipe r;
  r.calib_samples = images;
  Block b;
  b.model = task->load_model();
  UnitContext fp;
  torch::NoGradGuard ng;
  b.x = b.model->units()[0]->forward(task->calibration(r), fp);
  b.unit = b.model->units()[1];
  return b;
}

// The statistics term of one BatchNorm input z [N, C, H, W], written out from the paper's definition.
torch::Tensor direct_term(const torch::Tensor& z, const torch::Tensor& mean, const torch::Tensor& var) {
  const torch::Tensor zf = z.flatten(2).to(torch::kFloat64);
  const torch::Tensor m = zf.mean(2), s = (zf.var(2, true) + 1e-6).sqrt();
  const torch::Tensor mu = mean.to(torch::kFloat64), sd = (var.to(torch::kFloat64) + 1e-6).sqrt();
  return ((m - mu).square().sum() + (s - sd).square().sum()) / static_cast<double>(z.size(0));
}

}  // namespace

TEST(DistributionCorrection, StatisticsAreThoseOfTheUnfoldedBatchNormsOfTheRealResNet20) {
  Block b = first_block(64);
  ASSERT_EQ(b.unit->name(), "layer1.0");
  ASSERT_TRUE(has_batchnorm_statistics(*b.unit));
  // The block as the file holds it: conv1 -> bn1 -> relu -> conv2 -> bn2, with the raw (unfolded) tensors.
  const SafeTensorsFile f = load_safetensors(shared_path("data/cifar10/resnet20.safetensors"));
  auto bn = [&](const std::string& n, const torch::Tensor& z) {
    return torch::nn::functional::batch_norm(z, f.at(n + ".running_mean"), f.at(n + ".running_var"),
                                             torch::nn::functional::BatchNormFuncOptions()
                                                 .weight(f.at(n + ".weight")).bias(f.at(n + ".bias")).eps(1e-5));
  };
  const torch::Tensor z1 = torch::conv2d(b.x, f.at("layer1.0.conv1.weight"), {}, 1, 1);
  const torch::Tensor z2 = torch::conv2d(torch::relu(bn("layer1.0.bn1", z1)), f.at("layer1.0.conv2.weight"), {}, 1, 1);
  const double direct = (direct_term(z1, f.at("layer1.0.bn1.running_mean"), f.at("layer1.0.bn1.running_var")) +
                         direct_term(z2, f.at("layer1.0.bn2.running_mean"), f.at("layer1.0.bn2.running_var")))
                            .item<double>();
  const double ours = batchnorm_statistics_loss(*b.unit, b.x).item<double>();
  EXPECT_GT(direct, 1.0) << "real activations should be off their running statistics per sample";
  EXPECT_NEAR(ours, direct, 1e-4 * direct);

  // Cross-layer equalization rescales a producer's output channels; the BatchNorm input it recovers must not move.
  equalize_model(*b.model, 2);
  EXPECT_NEAR(batchnorm_statistics_loss(*b.unit, b.x).item<double>(), direct, 1e-4 * direct);
}

TEST(DistributionCorrection, StepsMoveStatisticsTowardsTheRunningOnesUnderTheConstraint) {
  Block b = first_block(64);
  const torch::Tensor x = b.x;
  DistributionCorrection opt;
  opt.iters = 0;
  EXPECT_TRUE(torch::equal(correct_distribution(*b.unit, x, opt).x, x)) << "0 steps must leave the input alone";

  opt.iters = 40;
  const CorrectedInput c = correct_distribution(*b.unit, x, opt);
  ASSERT_EQ(c.x.sizes(), x.sizes());
  EXPECT_LT(c.loss_end, 0.9 * c.loss_start);
  const double stats_before = batchnorm_statistics_loss(*b.unit, x).item<double>();
  EXPECT_LT(batchnorm_statistics_loss(*b.unit, c.x).item<double>(), 0.95 * stats_before);
  EXPECT_GT((c.x - x).abs().max().item<double>(), 1e-3) << "the input did not move";

  // A tight constraint (lambda_c tiny) keeps x' close to x: the constraint acts.
  opt.lambda_c = 1e-6;
  const torch::Tensor tight = correct_distribution(*b.unit, x, opt).x;
  EXPECT_LT((tight - x).abs().max().item<double>(), 0.1 * (c.x - x).abs().max().item<double>());

  // Batches are separate problems: two batches corrected together equal each corrected alone.
  opt.lambda_c = 0.02;
  opt.batch = 32;
  const torch::Tensor both = correct_distribution(*b.unit, x, opt).x;
  const torch::Tensor alone =
      torch::cat({correct_distribution(*b.unit, x.slice(0, 0, 32), opt).x, correct_distribution(*b.unit, x.slice(0, 32, 64), opt).x});
  EXPECT_LT((both - alone).abs().max().item<double>(), 1e-4);

  // Long corrections report progress per group of batches and stop between steps when asked (SIGINT/SIGTERM).
  const torch::Tensor wide = torch::cat({x, x, x, x});  // 256 samples: two groups of 128
  opt.iters = 2;
  std::vector<int64_t> done;
  opt.progress = [&](int64_t d, int64_t total) {
    EXPECT_EQ(total, 256);
    done.push_back(d);
  };
  correct_distribution(*b.unit, wide, opt);
  EXPECT_EQ(done, (std::vector<int64_t>{128, 256}));
  opt.progress = [](int64_t, int64_t) { request_stop(); };
  expect_error<InterruptedError>([&] { correct_distribution(*b.unit, wide, opt); },
                                 {"distribution correction of unit \"layer1.0\"", "step 0/2"});
  clear_stop_request();
}

TEST(DistributionCorrection, ChangesWhatTheEngineLearnsAndIsRefusedWithoutBatchNorms) {
  auto task = make_task(resnet20_workload(0));
  Recipe r = short_w2a4_recipe();
  r.qdrop = 0.5;
  r.iters = 10;
  const torch::Tensor calib = task->calibration(r);
  auto run = [&](int64_t dc) {
    Recipe x = r;
    x.dc_iters = dc;
    auto model = task->load_model();
    QuantState state;
    std::vector<std::string> lines;
    quantize(*model, calib, x, state, [&](const std::string& l) { lines.push_back(l); }, /*max_units=*/3);
    int corrections = 0;
    for (const auto& l : lines) corrections += l.find("distribution correction") != std::string::npos;
    EXPECT_EQ(corrections, dc > 0 ? 3 : 0) << "one correction per unit with BatchNorms";
    return state.weights.at("layer1.1.conv1").dequantize();
  };
  const torch::Tensor plain = run(0), again = run(0), dc = run(20);
  EXPECT_TRUE(torch::equal(plain, again)) << "the engine is not deterministic: the comparison below means nothing";
  EXPECT_FALSE(torch::equal(plain, dc)) << "the distribution correction changed nothing";

  // The ONNX export's BatchNorms were folded by PyTorch's exporter: nothing to correct towards, said before any work.
  auto onnx = make_task(resnet20_onnx_workload(0));
  Recipe o = r;
  o.dc_iters = 20;
  auto model = onnx->load_model();
  QuantState state;
  expect_error<ConfigError>([&] { quantize(*model, onnx->calibration(o), o, state, {}, 1); },
                            {"pd.dc_iters", "folded BatchNorm statistics", "pd.dc_iters=0"});

  Recipe bad = r;
  bad.dc_iters = 500;
  bad.recon_unit = "layer";
  expect_error<ConfigError>([&] { bad.validate(); }, {"pd.dc_iters", "recon.unit=block"});
  bad.recon_unit = "block";
  bad.dc_lambda = 0;
  expect_error<ConfigError>([&] { bad.validate(); }, {"pd.dc_lambda"});
  bad.dc_lambda = 0.02;
  bad.dc_lr = -1;
  expect_error<ConfigError>([&] { bad.validate(); }, {"pd.dc_lr"});
}
