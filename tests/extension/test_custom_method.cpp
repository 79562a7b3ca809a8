// A method defined here, outside the library, registered with register_method and run through quantize() on the
// real ResNet-20 with no library edit: the engine asks its registry entry what it needs (training iterations, a
// Hessian) and never its name. docs/adding-a-rounder.md walks through the same steps.
#include <gtest/gtest.h>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/reconstruct.h"
#include "flexquant/rounder.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;

namespace {

// Learned additive offset on the scaled weight: q = nearest(w/s + v), v starts at 0 (so step 0 is RTN), the
// straight-through estimator passes the gradient to v. Works on any grid because it rounds through WeightLevels.
class OffsetRounder : public Rounder {
 public:
  OffsetRounder() = default;
  explicit OffsetRounder(double max_shift) : max_shift_(max_shift) {}
  std::string name() const override { return "test-offset"; }
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    check_weight_finite(w, "weight");
    spec_ = spec;
    qp_ = qp;
    shape_ = w.sizes().vec();
    levels_ = std::make_shared<WeightLevels>(grouped_levels(spec, qp));
    r_ = to_grouped(w.detach().to(torch::kFloat), spec) / qp.scale;
    v_ = torch::zeros_like(r_).requires_grad_(true);
  }
  torch::Tensor forward(bool hard) override {
    torch::Tensor x = r_ + v_.clamp(-max_shift_, max_shift_);
    torch::Tensor q = levels_->nearest(x.detach());
    torch::Tensor out = hard ? q : (q - x).detach() + x;
    return from_grouped(qp_.scale * out, shape_);
  }
  std::vector<torch::Tensor> parameters() override { return {v_}; }
  QuantizedTensor harden() override {
    torch::NoGradGuard ng;
    return {levels_->to_codes(levels_->nearest(r_ + v_.clamp(-max_shift_, max_shift_))), qp_, shape_, spec_};
  }

 private:
  double max_shift_ = 1.0;
  WeightQuantSpec spec_;
  QParams qp_;
  std::vector<int64_t> shape_;
  std::shared_ptr<WeightLevels> levels_;
  torch::Tensor r_, v_;
};

// Round-to-nearest that insists on the Hessian its registry entry asked for.
class HessianCheckingRounder : public OffsetRounder {
 public:
  using OffsetRounder::init;
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats& stats) override {
    const int64_t k = w.numel() / w.size(0);
    FQ_CHECK(stats.hessian.defined() && stats.hessian.sizes() == at::IntArrayRef({k, k}), ConfigError,
             "test-hessian: the engine gave no [K, K] Hessian");
    ++seen;
    init(w, spec, qp);
  }
  static inline int seen = 0;
};

}  // namespace

TEST(CustomMethod, RegisteredOutsideTheLibraryRunsThroughQuantize) {
  register_method({"test-offset", "learned additive offset (test)", {/*training=*/true, false},
                   [](const RounderOptions& o) { return std::make_unique<OffsetRounder>(o.option("test-offset.max_shift")); },
                   {{"test-offset.max_shift", 1.0, "Largest learned offset, in grid steps (test)."}}});
  register_method({"test-hessian", "RTN that needs a Hessian (test)", {false, /*hessian=*/true},
                   [](const RounderOptions&) { return std::make_unique<HessianCheckingRounder>(); }, {}});
  auto data = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"));

  // The recipe knows the new name from the registry (JSON, --set and validation alike).
  Recipe r = Recipe::from_json_text(R"({"version": 1, "method": "test-offset", "recon": {"iters": 40, "lr": 0.01,
                                        "batch": 16}, "calib": {"samples": 128}, "weight": {"bits": 3}})");
  auto model = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  QuantState state;
  auto report = quantize(*model, data.images.slice(0, 0, r.calib_samples), r, state, [](const std::string&) {});
  ASSERT_EQ(report.units.size(), 11u);
  int improved = 0;
  for (auto& u : report.units) {
    EXPECT_EQ(u.iters, 40) << u.name << ": a training method gets recon.iters";
    EXPECT_EQ(u.method, "test-offset");
    improved += u.loss_end < u.loss_start;
  }
  EXPECT_GE(improved, 9) << "the offset rounder trained by the engine should beat its RTN start on most blocks";
  ASSERT_EQ(state.weights.size(), 20u);
  for (QuantLayer* l : model->all_layers())
    EXPECT_TRUE(torch::equal(state.weights.at(l->name).dequantize(), l->weight)) << l->name;

  // needs.hessian: the engine collects each layer's Hessian and trains nothing.
  Recipe h = r;
  h.method = "test-hessian";
  auto model2 = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  QuantState state2;
  HessianCheckingRounder::seen = 0;
  auto report2 = quantize(*model2, data.images.slice(0, 0, h.calib_samples), h, state2, [](const std::string&) {},
                          /*max_units=*/3);
  EXPECT_EQ(HessianCheckingRounder::seen, 1 + 2 + 2);  // stem, two basic blocks
  for (auto& u : report2.units) EXPECT_EQ(u.iters, 0) << u.name;

  Recipe bad = r;
  bad.method = "test-offst";
  try {
    bad.validate();
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("test-offset"), std::string::npos) << e.what();
  }
}

// A registered method owns a recipe section: its option is a recipe key (JSON, --set, the field list and docs), at
// its default until set, and it reaches the factory. With max_shift 0 the offset rounder cannot move: RTN exactly.
TEST(CustomMethod, OwnsItsRecipeSection) {
  register_method({"test-offset", "learned additive offset (test)", {/*training=*/true, false},
                   [](const RounderOptions& o) { return std::make_unique<OffsetRounder>(o.option("test-offset.max_shift")); },
                   {{"test-offset.max_shift", 1.0, "Largest learned offset, in grid steps (test)."}}});
  EXPECT_EQ(Recipe{}.rounder.option("test-offset.max_shift"), 1.0);
  bool listed = false;
  for (const RecipeField& f : describe_recipe()) listed |= f.key == "test-offset.max_shift" && f.help.find("(test)") != std::string::npos;
  EXPECT_TRUE(listed) << "describe_recipe() (docs, --help) lacks the method's option";
  EXPECT_NE(recipe_markdown().find("test-offset.max_shift"), std::string::npos);

  Recipe r = Recipe::from_json_text(R"({"version": 1, "method": "test-offset", "test-offset": {"max_shift": 0},
                                        "recon": {"iters": 20, "lr": 0.01, "batch": 16}, "calib": {"samples": 64},
                                        "weight": {"bits": 3}})");
  EXPECT_EQ(r.rounder.option("test-offset.max_shift"), 0.0);
  Recipe s = r;
  s.set("test-offset.max_shift", "0.25");
  EXPECT_EQ(s.rounder.option("test-offset.max_shift"), 0.25);
  flexquant::testing::expect_error<ConfigError>([&] { s.set("test-offset.nope", "1"); }, {"test-offset.nope"});
  flexquant::testing::expect_error<ConfigError>(
      [] { register_method({"test-bad", "", {}, [](const RounderOptions&) { return std::make_unique<OffsetRounder>(); },
                            {{"other.key", 0, ""}}}); },
      {"other.key", "test-bad.<option>"});

  auto data = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"));
  auto model = load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  QuantState state;
  auto report = quantize(*model, data.images.slice(0, 0, r.calib_samples), r, state, [](const std::string&) {},
                         /*max_units=*/2);
  for (auto& u : report.units) EXPECT_EQ(u.loss_end, u.loss_start) << u.name << ": max_shift 0 must keep RTN";
}
