// CNN adapters: the real CIFAR ResNet-20 (BN folding vs an unfolded reference forward written here
// independently, FP32 top-1 on the whole test set vs the README's 81.03 %), unit/site structure, the
// UnitContext contract, weight replacement, loader errors, and the torchvision layouts against logits from
// the real torchvision (goldens from gen_torchvision_golden.py, weights rebuilt here from the same seed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/safetensors.h"
#include "test_data.h"
#include "models/seeded_weights.h"

using namespace flexquant;

using flexquant::testing::expect_error;
using flexquant::testing::fill_weights;

namespace {

std::string r20_path() { return flexquant::testing::shared_path("data/cifar10/resnet20.safetensors"); }


// Unfolded CIFAR ResNet forward straight from the checkpoint tensors (conv, eval BatchNorm, option-A
// shortcut via cat with zeros): an independent reference for the adapter.
torch::Tensor reference_resnet_cifar(const SafeTensorsFile& f, torch::Tensor x, int nblocks) {
  auto bn = [&](const torch::Tensor& h, const std::string& n) {
    return torch::batch_norm(h, f.at(n + ".weight"), f.at(n + ".bias"), f.at(n + ".running_mean"),
                             f.at(n + ".running_var"), false, 0.1, 1e-5, false);
  };
  auto conv = [&](const torch::Tensor& h, const std::string& n, int64_t stride) {
    return torch::conv2d(h, f.at(n + ".weight"), {}, stride, 1);
  };
  x = torch::relu(bn(conv(x, "conv1", 1), "bn1"));
  for (int s = 1; s <= 3; ++s)
    for (int i = 0; i < nblocks; ++i) {
      const std::string b = "layer" + std::to_string(s) + "." + std::to_string(i);
      const int64_t stride = (s > 1 && i == 0) ? 2 : 1;
      auto h = torch::relu(bn(conv(x, b + ".conv1", stride), b + ".bn1"));
      h = bn(conv(h, b + ".conv2", 1), b + ".bn2");
      torch::Tensor sc = x;
      if (stride == 2) {
        auto sub = x.index({torch::indexing::Slice(), torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2),
                            torch::indexing::Slice(0, torch::indexing::None, 2)});
        auto z = torch::zeros({sub.size(0), h.size(1) / 4, sub.size(2), sub.size(3)});
        sc = torch::cat({z, sub, z}, 1);
      }
      x = torch::relu(h + sc);
    }
  x = x.mean({2, 3});
  return torch::addmm(f.at("linear.bias"), x, f.at("linear.weight").t());
}

// Counts hook calls, and checks they come in the contract's order.
struct CountingContext : UnitContext {
  int64_t runs = 0, acts = 0, observed = 0;
  std::vector<std::string> site_names;
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    ++acts;
    site_names.push_back(site.name);
    if (site.non_negative) {
      EXPECT_GE(x.min().item<float>(), 0.0f) << site.name;
    }
    return x;
  }
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) override { ++observed; }
  torch::Tensor weight(const QuantLayer& layer, int i) override {
    ++runs;
    return layer.weight;
  }
};

}  // namespace

TEST(CnnResnetCifar, StructureAndSites) {
  auto m = load_image_classifier(r20_path(), "resnet_cifar");
  EXPECT_EQ(m->arch(), "resnet_cifar");
  auto units = m->units();
  ASSERT_EQ(units.size(), 11u);  // stem + 9 blocks + classifier
  EXPECT_EQ(units[0]->name(), "conv1");
  EXPECT_EQ(units[1]->name(), "layer1.0");
  EXPECT_EQ(units[9]->name(), "layer3.2");
  EXPECT_EQ(units[10]->name(), "linear");
  auto layers = m->all_layers();
  ASSERT_EQ(layers.size(), 20u);  // ResNet-20
  // The adapter states the policy roles the engine reads: the stem is the Input layer, the classifier the
  // Output layer and its input site the ClassifierInput; everything else is Hidden / a plain activation.
  for (size_t i = 0; i < layers.size(); ++i)
    EXPECT_EQ(layers[i]->role, i == 0 ? LayerRole::Input : i + 1 == layers.size() ? LayerRole::Output : LayerRole::Hidden)
        << layers[i]->name;
  for (Unit* u : units)
    for (const ActSite& s : u->act_sites())
      EXPECT_EQ(s.role, u == units.back() ? SiteRole::ClassifierInput : SiteRole::Activation) << u->name() << "/" << s.name;
  EXPECT_EQ(layers.front()->name, "conv1");
  EXPECT_EQ(layers[1]->name, "layer1.0.conv1");
  EXPECT_EQ(layers.back()->name, "linear");
  EXPECT_EQ(layers.back()->kind, LayerKind::Linear);
  EXPECT_EQ(units[7]->layers()[0].stride, 2);  // layer3.0.conv1
  ASSERT_EQ(units[0]->act_sites().size(), 1u);
  EXPECT_EQ(units[0]->act_sites()[0].name, "conv1.out");
  ASSERT_EQ(units[4]->act_sites().size(), 2u);
  EXPECT_EQ(units[4]->act_sites()[0].name, "layer2.0.act1");
  EXPECT_EQ(units[4]->act_sites()[1].name, "layer2.0.out");
  EXPECT_TRUE(units[4]->act_sites()[1].non_negative);
  ASSERT_EQ(units[10]->act_sites().size(), 1u);
  EXPECT_EQ(units[10]->act_sites()[0].name, "linear.in");

  CountingContext ctx;
  auto x = torch::randn({4, 3, 32, 32});
  auto y = m->forward(x, ctx);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{4, 10}));
  EXPECT_EQ(ctx.runs, 20);
  EXPECT_EQ(ctx.observed, 20);
  EXPECT_EQ(ctx.acts, 1 + 9 * 2 + 1);
  EXPECT_EQ(ctx.site_names.back(), "linear.in");
}

TEST(CnnResnetCifar, BnFoldingMatchesUnfolded) {
  const auto f = load_safetensors(r20_path());
  // One layer: folded conv == conv followed by eval BatchNorm.
  auto x = torch::randn({8, 16, 32, 32});
  auto folded = fold_batchnorm(f.at("layer1.1.conv2.weight"), {}, f.at("layer1.1.bn2.weight"), f.at("layer1.1.bn2.bias"),
                               f.at("layer1.1.bn2.running_mean"), f.at("layer1.1.bn2.running_var"));
  auto ref = torch::batch_norm(torch::conv2d(x, f.at("layer1.1.conv2.weight"), {}, 1, 1), f.at("layer1.1.bn2.weight"),
                               f.at("layer1.1.bn2.bias"), f.at("layer1.1.bn2.running_mean"),
                               f.at("layer1.1.bn2.running_var"), false, 0.1, 1e-5, false);
  const double d1 = (torch::conv2d(x, folded.weight, folded.bias, 1, 1) - ref).abs().max().item<double>();
  EXPECT_LT(d1, 1e-4);
  // With a conv bias too.
  auto cb = torch::randn({16});
  auto folded_b = fold_batchnorm(f.at("layer1.1.conv2.weight"), cb, f.at("layer1.1.bn2.weight"), f.at("layer1.1.bn2.bias"),
                                 f.at("layer1.1.bn2.running_mean"), f.at("layer1.1.bn2.running_var"));
  auto ref_b = torch::batch_norm(torch::conv2d(x, f.at("layer1.1.conv2.weight"), cb, 1, 1), f.at("layer1.1.bn2.weight"),
                                 f.at("layer1.1.bn2.bias"), f.at("layer1.1.bn2.running_mean"),
                                 f.at("layer1.1.bn2.running_var"), false, 0.1, 1e-5, false);
  EXPECT_LT((torch::conv2d(x, folded_b.weight, folded_b.bias, 1, 1) - ref_b).abs().max().item<double>(), 1e-4);

  // Whole network on real test images: folded adapter vs the unfolded reference.
  auto data = load_cifar10(flexquant::testing::shared_path("data/cifar10/cifar10_test_00.bin"));
  auto imgs = data.images.slice(0, 0, 64);
  auto m = build_image_classifier(f, "resnet_cifar");
  torch::NoGradGuard ng;
  auto ours = m->forward(imgs);
  auto theirs = reference_resnet_cifar(f, imgs, 3);
  const double d = (ours - theirs).abs().max().item<double>();
  EXPECT_LT(d, 1e-4) << "max |logit diff| " << d;
  EXPECT_TRUE(torch::equal(ours.argmax(1), theirs.argmax(1)));
}

// The key correctness test: FP32 top-1 of the real ResNet-20 on all 10,000 test images matches the
// README's independent figure.
TEST(CnnResnetCifar, Resnet20Top1MatchesReadme) {
  auto data = load_dataset("cifar10:" + std::filesystem::path(r20_path()).parent_path().string());
  ASSERT_EQ(data.size(), 10000);
  auto m = load_image_classifier(r20_path(), "resnet_cifar");
  const EvalResult r = evaluate_classifier(*m, data.images, data.labels);
  EXPECT_EQ(r.count, 10000);
  EXPECT_NEAR(r.top1, 81.03, 0.05) << r.correct << " / " << r.count << " in " << r.seconds << " s";
  std::printf("[ resnet20 ] FP32 top-1 %.2f %% (%lld/%lld) in %.2f s\n", r.top1, (long long)r.correct,
              (long long)r.count, r.seconds);
}

TEST(CnnResnetCifar, WeightReplacementAndDevice) {
  auto m = load_image_classifier(r20_path(), "resnet_cifar");
  auto x = torch::randn({2, 3, 32, 32});
  torch::NoGradGuard ng;
  auto y0 = m->forward(x);
  // The engine swaps a layer's weight in place: the forward must use it.
  QuantLayer& fc = m->units().back()->layers()[0];
  fc.weight = torch::zeros_like(fc.weight);
  auto y1 = m->forward(x);
  EXPECT_TRUE(torch::allclose(y1, fc.bias.expand_as(y1)));
  EXPECT_FALSE(torch::allclose(y0, y1));
  m->to(torch::kCPU);
  EXPECT_EQ(m->all_layers()[3]->weight.device().type(), torch::kCPU);
}

TEST(CnnResnetCifar, Resnet32And44Structure) {
  for (auto [name, blocks] : {std::pair<const char*, int>{"resnet32", 5}, {"resnet44", 7}}) {
    auto m = load_image_classifier(flexquant::testing::shared_path(std::string("data/cifar10/") + name + ".safetensors"),
                                   "resnet_cifar");
    EXPECT_EQ(m->units().size(), static_cast<size_t>(3 * blocks + 2)) << name;
    EXPECT_EQ(m->all_layers().size(), static_cast<size_t>(6 * blocks + 2)) << name;
  }
}

TEST(CnnLoader, Errors) {
  expect_error<ConfigError>([] { load_image_classifier(r20_path(), "resnet21"); },
                            {"\"resnet21\"", "resnet_cifar", "resnet18", "resnet50", "mobilenet_v2"});
  expect_error<IoError>([] { load_image_classifier("/nonexistent.safetensors", "resnet_cifar"); }, {"not found"});
  const auto good = load_safetensors(r20_path());
  {
    auto f = good;
    f.tensors.erase("layer2.1.bn1.running_var");
    f.names.erase(std::find(f.names.begin(), f.names.end(), "layer2.1.bn1.running_var"));
    expect_error<ModelError>([&] { build_image_classifier(f, "resnet_cifar"); }, {"\"layer2.1.bn1.running_var\"", "missing"});
  }
  {
    auto f = good;
    f.tensors["layer1.0.extra.weight"] = torch::zeros({1});
    f.names.push_back("layer1.0.extra.weight");
    expect_error<ModelError>([&] { build_image_classifier(f, "resnet_cifar"); }, {"unexpected", "\"layer1.0.extra.weight\""});
  }
  {
    auto f = good;
    f.tensors["layer3.1.conv2.weight"] = torch::zeros({64, 64, 1, 1});
    expect_error<ModelError>([&] { build_image_classifier(f, "resnet_cifar"); },
                             {"\"layer3.1.conv2.weight\"", "wrong shape", "[64, 64, 1, 1]", "[64, 64, 3, 3]"});
  }
  {
    auto f = good;
    f.tensors["layer2.2.bn2.weight"] = f.at("layer2.2.bn2.weight").clone();
    f.tensors["layer2.2.bn2.weight"][5] = std::numeric_limits<float>::infinity();
    expect_error<NumericError>([&] { build_image_classifier(f, "resnet_cifar"); }, {"\"layer2.2.bn2.weight\"", "NaN/inf"});
  }
  {  // Drop a whole block from stage 3: stages disagree.
    auto f = good;
    for (auto it = f.names.begin(); it != f.names.end();)
      if (it->rfind("layer3.2.", 0) == 0) {
        f.tensors.erase(*it);
        it = f.names.erase(it);
      } else {
        ++it;
      }
    expect_error<ModelError>([&] { build_image_classifier(f, "resnet_cifar"); }, {"layer3", "2 blocks", "3"});
  }
  // A CIFAR file is not a torchvision resnet18.
  expect_error<ModelError>([&] { build_image_classifier(good, "resnet18"); }, {"resnet18"});
  expect_error<ModelError>([&] { build_image_classifier(good, "mobilenet_v2"); }, {"features.0.0.weight"});
}

// ---------------------------------------------------------------------------------------------------
// torchvision layouts vs real torchvision (see gen_torchvision_golden.py for the fill rule).

namespace {

void check_torchvision(const std::string& arch, size_t units, size_t layers) {
  const auto golden = load_safetensors("tests/models/golden/torchvision_" + arch + ".safetensors");
  ASSERT_EQ(golden.metadata.at("arch"), arch);
  std::vector<double> sums;
  const auto weights = fill_weights(golden, sums);
  const torch::Tensor x = torch::randn({2, 3, 64, 64});
  // Same random stream as Python: every regenerated tensor's sum matches.
  const auto& ref_sums = golden.at("checksums");
  ASSERT_EQ(static_cast<int64_t>(sums.size()), ref_sums.numel());
  int64_t sum_mismatch = 0;
  for (size_t i = 0; i < sums.size(); ++i)
    sum_mismatch += std::abs(sums[i] - ref_sums[i].item<double>()) > 1e-6 * (1 + std::abs(sums[i]));
  ASSERT_EQ(sum_mismatch, 0) << "the C++ and Python random streams differ: fix fill_weights(), not the model";

  auto m = build_image_classifier(weights, arch);
  EXPECT_EQ(m->units().size(), units);
  EXPECT_EQ(m->all_layers().size(), layers);
  CountingContext ctx;
  torch::NoGradGuard ng;
  const torch::Tensor y = m->forward(x, ctx);
  EXPECT_EQ(ctx.runs, static_cast<int64_t>(layers));
  const torch::Tensor& ref = golden.at("logits");
  ASSERT_EQ(y.sizes(), ref.sizes());
  const double scale = ref.abs().max().item<double>();
  const double diff = (y - ref).abs().max().item<double>();
  EXPECT_LT(diff, 1e-4 * scale) << arch << ": max |diff| " << diff << " vs max |logit| " << scale;
  EXPECT_TRUE(torch::equal(y.argmax(1), ref.argmax(1)));
}

}  // namespace

TEST(CnnTorchvision, Resnet18MatchesTorchvision) { check_torchvision("resnet18", 1 + 8 + 1, 1 + 16 + 3 + 1); }
TEST(CnnTorchvision, Resnet50MatchesTorchvision) { check_torchvision("resnet50", 1 + 16 + 1, 1 + 48 + 4 + 1); }
TEST(CnnTorchvision, MobilenetV2MatchesTorchvision) { check_torchvision("mobilenet_v2", 1 + 17 + 1 + 1, 1 + 2 + 16 * 3 + 1 + 1); }

TEST(CnnTorchvision, SitesAndGroups) {
  const auto golden = load_safetensors("tests/models/golden/torchvision_mobilenet_v2.safetensors");
  std::vector<double> sums;
  auto m = build_image_classifier(fill_weights(golden, sums), "mobilenet_v2");
  auto units = m->units();
  EXPECT_EQ(units[0]->name(), "features.0");
  EXPECT_EQ(units[1]->name(), "features.1");
  ASSERT_EQ(units[1]->layers().size(), 2u);  // t = 1: no expansion
  EXPECT_EQ(units[1]->layers()[0].name, "features.1.conv.0.0");
  EXPECT_EQ(units[1]->layers()[0].groups, 32);
  ASSERT_EQ(units[2]->layers().size(), 3u);
  EXPECT_EQ(units[2]->layers()[1].groups, 96);
  EXPECT_EQ(units[2]->layers()[1].stride, 2);
  ASSERT_EQ(units[2]->act_sites().size(), 3u);
  EXPECT_EQ(units[2]->act_sites()[2].name, "features.2.out");
  EXPECT_FALSE(units[2]->act_sites()[2].non_negative);  // linear bottleneck output is signed
  EXPECT_EQ(units[18]->name(), "features.18");
  EXPECT_EQ(units[19]->name(), "classifier");
  EXPECT_EQ(units[19]->layers()[0].name, "classifier.1");
  EXPECT_EQ(units[19]->act_sites()[0].name, "classifier.in");
}
