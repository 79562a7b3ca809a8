// End-to-end engine tests on the real ResNet-20 / CIFAR-10 and stories260K: block reconstruction lowers the
// loss below round-to-nearest, the .fqz reload reproduces the fake-quantized model bit for bit.
#include <gtest/gtest.h>

#include <filesystem>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/qmodel.h"
#include "flexquant/reconstruct.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;

namespace {
Recipe small_recipe(const std::string& method, int iters) {
  Recipe r;
  r.method = method;
  r.weight_bits = 4;
  r.act_bits = 4;
  r.iters = iters;
  r.calib_samples = 128;
  r.batch = 16;
  return r;
}
}  // namespace

TEST(Engine, FlexRoundBeatsNearestOnRealResNet20Blocks) {
  auto model = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  auto data = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"));
  Recipe r = small_recipe("flexround", 60);
  QuantState state;
  auto report = quantize_model(*model, data.images.slice(0, 0, r.calib_samples), r, state, [](const std::string&) {});
  ASSERT_EQ(report.units.size(), 11u);
  int improved = 0;
  for (auto& u : report.units) improved += u.loss_end < u.loss_start;
  // Every residual block (9 of 11 units) must end below its round-to-nearest start.
  EXPECT_GE(improved, 9);
  EXPECT_EQ(state.weights.size(), 20u);  // 19 convs + linear (option-A shortcuts have no weights)
}

TEST(Engine, SavedModelReproducesFakeQuantAccuracyExactly) {
  Workload w;
  w.model = shared_path("data/cifar10/resnet20.safetensors");
  w.arch = "resnet_cifar";
  w.data = "cifar10:" + shared_path("data/cifar10");
  w.eval_limit = 500;
  auto task = make_task(w);
  auto path = (std::filesystem::temp_directory_path() / "fq_test_r20.fqz").string();
  Recipe r = small_recipe("adaround", 20);
  r.weight_bits = 3;
  auto res = run_method(*task, r, path, [](const std::string&) {});
  double reloaded = evaluate_qmodel(*task, path);
  EXPECT_EQ(reloaded, res.metric);
  EXPECT_GT(res.size_bytes, 0);
  // 3-bit weights pack to < 1/8 of the fp32 weights (plus scales and metadata)
  EXPECT_LT(res.size_bytes, 270000 * 4 / 8);
  QModelInfo info = read_qmodel_info(path);
  EXPECT_EQ(info.arch, "resnet_cifar");
  EXPECT_NE(info.calibration.find("records 0-127"), std::string::npos) << info.calibration;
  EXPECT_EQ(Recipe::from_json_text(info.recipe_json).to_json(), r.to_json());
  // The fp weights after reload equal the quantized grid: a different source model must be refused.
  Workload other = w;
  other.model = shared_path("data/cifar10/resnet32.safetensors");
  EXPECT_THROW(evaluate_qmodel(*make_task(other), path), flexquant::ModelError);
  std::filesystem::remove(path);
}

TEST(Engine, LanguageModelEndToEnd) {
  Workload w;
  w.model = shared_path("data/lm/stories260K.bin");
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = 4000;
  auto task = make_task(w);
  double fp = evaluate_fp(*task);
  Recipe r;
  r.method = "flexround";
  r.weight_bits = 3;
  r.weight_granularity = "channel";
  r.weight_symmetric = false;
  r.iters = 30;
  r.batch = 4;
  r.calib_samples = 16;
  r.calib_seq_len = 128;
  Recipe rtn = r;
  rtn.method = "rtn";
  auto path = (std::filesystem::temp_directory_path() / "fq_test_lm.fqz").string();
  auto q_rtn = run_method(*task, rtn);
  auto q = run_method(*task, r, path);
  EXPECT_GT(q_rtn.metric, fp);  // W3 costs perplexity
  EXPECT_LT(q.metric, q_rtn.metric) << "FlexRound W3 ppl " << q.metric << " vs RTN " << q_rtn.metric;
  EXPECT_EQ(evaluate_qmodel(*task, path), q.metric);
  std::filesystem::remove(path);
}

TEST(Engine, GptqAndSmoothQuantOnStories260K) {
  Workload w;
  w.model = shared_path("data/lm/stories260K.bin");
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = 4000;
  auto task = make_task(w);
  Recipe r;
  r.method = "gptq";
  r.weight_bits = 3;
  r.weight_granularity = "channel";
  r.weight_symmetric = false;
  r.calib_samples = 32;
  r.calib_seq_len = 256;
  Recipe rtn = r;
  rtn.method = "rtn";
  auto q_rtn = run_method(*task, rtn);
  auto q = run_method(*task, r);
  EXPECT_LT(q.metric, q_rtn.metric) << "GPTQ W3 ppl " << q.metric << " vs RTN " << q_rtn.metric;

  // W8A8 per-tensor static with SmoothQuant: the .fqz must carry the norm scaling to reproduce exactly.
  Recipe sq = rtn;
  sq.weight_bits = 8;
  sq.act_bits = 8;
  sq.smooth_alpha = 0.5;
  auto path = (std::filesystem::temp_directory_path() / "fq_test_sq.fqz").string();
  auto q_sq = run_method(*task, sq, path);
  EXPECT_EQ(evaluate_qmodel(*task, path), q_sq.metric);
  std::filesystem::remove(path);
}
