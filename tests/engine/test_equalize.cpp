// Cross-layer equalization and bias correction (issue #13 item 5): CLE keeps the function of MobileNetV2 (seeded
// torchvision weights, CIFAR-10-sized inputs, ReLU6 ceilings rescaled) and of the real ResNet-20, equalizes the
// ranges it pairs, replays bit for bit from saved scales (also through a .fqz); bias correction zeroes each layer's
// mean output shift on the calibration inputs.
#include <gtest/gtest.h>

#include <filesystem>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/equalize.h"
#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/qmodel.h"
#include "models/seeded_weights.h"
#include "engine/workloads.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::seeded_weights;
using flexquant::testing::resnet20_onnx_workload;
using flexquant::testing::resnet20_workload;
using flexquant::testing::shared_path;
using flexquant::testing::stories_workload;

namespace {
std::unique_ptr<ModelAdapter> mobilenet() { return build_image_classifier(seeded_weights("mobilenet_v2"), "mobilenet_v2"); }

torch::Tensor logits(ModelAdapter& m, const torch::Tensor& x) {
  torch::NoGradGuard ng;
  return m.forward(x);
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

torch::Tensor producer_range(const EqualizationPair& p) {
  return p.producer->weight.abs().reshape({p.producer->weight.size(0), -1}).amax(1);
}

std::vector<torch::Tensor> weights(ModelAdapter& m) {
  std::vector<torch::Tensor> out;
  for (QuantLayer* l : m.all_layers()) out.push_back(l->weight.clone());
  return out;
}

torch::Tensor cifar_images(int64_t n) {
  return load_dataset("cifar10:" + shared_path("data/cifar10")).images.slice(0, 0, n);
}
}  // namespace

TEST(CrossLayerEqualization, KeepsMobilenetV2OnCifarSizedInputsAndEqualizesRanges) {
  auto m = mobilenet();
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({4, 3, 32, 32});
  const torch::Tensor before = logits(*m, x);
  const auto pairs = m->equalization_pairs();
  ASSERT_EQ(pairs.size(), 1u + 16u * 2u);  // t=1 block: dw>project; 16 blocks: expand>dw, dw>project
  // ReLU6 sits between every pair here: the ceilings move with the channels.
  for (const auto& p : pairs) ASSERT_NE(p.clip, nullptr) << p.name;

  const auto scales = equalize_model(*m, 1);
  // Exact in real arithmetic; in float32 each of the 33 pairs rounds its two weights once more (1.1e-5 measured with
  // the exporter-order BN fold). A wrong scale or ceiling moves the logits by orders of magnitude more.
  EXPECT_LT(rel_diff(logits(*m, x), before), 5e-5);
  bool moved_ceiling = false;
  for (const auto& p : pairs) moved_ceiling |= !(*p.clip == 6.0f).all().item<bool>();
  EXPECT_TRUE(moved_ceiling) << "no ReLU6 ceiling was rescaled";

  // Right after its own step a pair's two ranges agree per channel; the last pair is touched by nothing later.
  const auto& last = pairs.back();
  const torch::Tensor s = equalization_scales(*last.producer, *last.consumer);
  EXPECT_LT((s - 1).abs().max().item<double>(), 1e-5);
  // More sweeps move the scales toward 1 everywhere (DFQ's iteration converges).
  double worst_before = 0, worst_after = 0;
  for (const auto& p : pairs)
    worst_before = std::max(worst_before, (equalization_scales(*p.producer, *p.consumer).log().abs()).max().item<double>());
  equalize_model(*m, 20);
  for (const auto& p : pairs)
    worst_after = std::max(worst_after, (equalization_scales(*p.producer, *p.consumer).log().abs()).max().item<double>());
  EXPECT_LT(worst_after, worst_before);
  EXPECT_LT(rel_diff(logits(*m, x), before), 1e-4);
}

TEST(CrossLayerEqualization, KeepsRealResNet20AndNarrowsItsChannelRanges) {
  auto m = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  const torch::Tensor x = cifar_images(64);
  const torch::Tensor before = logits(*m, x);
  const auto pairs = m->equalization_pairs();
  ASSERT_EQ(pairs.size(), 9u);  // conv1 > conv2 of each BasicBlock
  for (const auto& p : pairs) EXPECT_EQ(p.clip, nullptr) << p.name;
  // Spread of the producers' per-channel ranges (max / min): what a per-tensor grid pays for.
  auto spread = [&] {
    double worst = 0;
    for (const auto& p : pairs) {
      const torch::Tensor r = producer_range(p);
      worst = std::max(worst, (r.max() / r.min()).item<double>());
    }
    return worst;
  };
  const double spread_before = spread();
  equalize_model(*m, 2);
  EXPECT_LT(rel_diff(logits(*m, x), before), 1e-5);
  EXPECT_LT(spread(), spread_before);
}

TEST(CrossLayerEqualization, SavedScalesReplayBitForBit) {
  auto a = mobilenet();
  auto b = mobilenet();
  const auto scales = equalize_model(*a, 3);
  for (const auto& [name, s] : scales) EXPECT_EQ(s.size(0), 3) << name;
  apply_equalization(*b, scales, "test");
  const auto wa = weights(*a), wb = weights(*b);
  for (size_t i = 0; i < wa.size(); ++i) EXPECT_TRUE(torch::equal(wa[i], wb[i])) << a->all_layers()[i]->name;
  const auto pa = a->equalization_pairs(), pb = b->equalization_pairs();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(*pa[i].clip, *pb[i].clip)) << pa[i].name;

  auto other = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  expect_error<ModelError>([&] { apply_equalization(*other, scales, "\"m.fqz\""); },
                           {"\"m.fqz\"", "another model"});
}

TEST(CrossLayerEqualization, RefusesAModelWithoutPairs) {
  auto m = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  expect_error<ConfigError>([&] { equalize_model(*m, 0); }, {"cle.iters", ">= 1"});
  auto onnx = make_task(resnet20_onnx_workload(0))->load_model();
  expect_error<ConfigError>([&] { equalize_model(*onnx, 1); }, {"no layer pairs", "cle.iters=0"});
}

// The whole engine path on real ResNet-20: RTN per-tensor W4 with CLE and bias correction, saved and reloaded.
TEST(BiasCorrection, ZeroesEachLayersMeanShiftAndSurvivesTheFqz) {
  const Workload w = resnet20_workload(256);
  auto task = make_task(w);
  Recipe r;
  r.method = "rtn";
  r.weight_bits = 4;
  r.weight_granularity = "tensor";
  r.act_bits = 32;
  r.first_last_bits = 0;  // the stem at 4 bits too: its rounding shift is what the test checks
  r.calib_samples = 256;
  r.cle_iters = 2;
  r.bias_correction = true;
  const torch::Tensor calib = task->calibration(r);

  auto fp = task->load_model();
  auto model = task->load_model();
  QuantState state;
  quantize(*model, calib, r, state);
  // The stem conv sees the images themselves: its corrected output mean equals the (equalized) FP mean.
  auto eq = task->load_model();
  apply_equalization(*eq, state.equalization_scales, "state");
  const QuantLayer& q = *model->all_layers()[0];
  const QuantLayer& f = *eq->all_layers()[0];
  torch::NoGradGuard ng;
  // apply() adds each layer's own bias: the corrected model's mean output shift, and what it was before.
  const torch::Tensor shift = (q.apply(calib, q.weight) - f.apply(calib, f.weight)).mean({0, 2, 3});
  const torch::Tensor rounding = shift - (q.bias - f.bias);
  EXPECT_GT(rounding.abs().max().item<double>(), 1e-3) << "the rounding moved no channel mean: nothing to correct";
  EXPECT_LT(shift.abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(torch::equal(q.bias, f.bias));

  // Saved and reloaded, the model evaluates exactly as it did.
  QuantizedContext ctx(state);
  const double metric = task->evaluate(*model, ctx);
  const auto path = (std::filesystem::temp_directory_path() / "fq_cle_bc.fqz").string();
  QModelInfo info;
  info.arch = "resnet_cifar";
  info.source_model = w.model;
  info.source_hash = file_hash(w.model);
  save_qmodel(path, *model, state, info);
  EXPECT_EQ(evaluate_qmodel(*task, path), metric);
  std::filesystem::remove(path);
}
