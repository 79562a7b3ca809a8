// Precision sweep (issue #13 item 6): W1 against a direct computation, k = 23 equals FP32 exactly, every model
// tensor and activation lands on the format's grid, fewer bits do measurable damage, on the real ResNet-20 and
// stories260K.
#include <gtest/gtest.h>

#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/sweep.h"
#include "engine/workloads.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::resnet20_onnx_workload;
using flexquant::testing::resnet20_workload;
using flexquant::testing::shared_path;
using flexquant::testing::stories_workload;

namespace {
std::unique_ptr<Task> resnet20_task(int64_t images) { return make_task(resnet20_workload(images)); }
std::unique_ptr<Task> stories_task(int64_t tokens) { return make_task(stories_workload(tokens)); }

SweepOptions only(std::vector<std::string> formats) {
  SweepOptions o;
  o.formats.clear();
  for (const auto& f : formats) o.formats.push_back(Format::parse(f));
  return o;
}

const SweepPoint& point(const SweepReport& r, const std::string& f, RoundingMode m) {
  for (const SweepPoint& p : r.points)
    if (p.format == f && p.mode == m) return p;
  throw std::runtime_error("no point " + f);
}

// Counts the activations a forward hands to a context's sites, to check the emulator rounds each.
class SiteRecorder : public UnitContext {
 public:
  torch::Tensor act(const ActSite&, int, const torch::Tensor& x) override {
    seen.push_back(x.detach().clone());
    return x;
  }
  std::vector<torch::Tensor> seen;
};
}  // namespace

TEST(Sweep, Wasserstein1MatchesDirectComputation) {
  // Sorted a = 0 1 3, sorted b = 1 2 2: |0-1| + |1-2| + |3-2| = 3 over 3 values.
  EXPECT_DOUBLE_EQ(wasserstein1(torch::tensor({3.0, 0.0, 1.0}), torch::tensor({2.0, 1.0, 2.0})), 1.0);
  // A shift moves every quantile by the shift; a permutation moves nothing.
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({1000}, torch::kFloat64);
  EXPECT_NEAR(wasserstein1(x, x + 0.25), 0.25, 1e-12);
  EXPECT_EQ(wasserstein1(x, x.flip(0)), 0.0);
  // Per-column mean: columns shifted by 1 and 3 average to 2.
  const torch::Tensor ref = torch::stack({x, x}, 1);
  EXPECT_NEAR(output_distance(ref, torch::stack({x + 1, x - 3}, 1)), 2.0, 1e-12);
  expect_error<ConfigError>([&] { wasserstein1(x, x.slice(0, 0, 10)); }, {"1000", "10", "equal size"});
  expect_error<ConfigError>([&] { output_distance(ref, x.unsqueeze(1)); }, {"same shape"});
}

TEST(Sweep, TwentyThreeBitsEqualsFp32ExactlyOnResNet20AndStories) {
  std::vector<std::unique_ptr<Task>> tasks;
  tasks.push_back(resnet20_task(256));
  tasks.push_back(stories_task(1000));
  for (const auto& task : tasks) {
    const double fp = evaluate_fp(*task);
    const SweepReport r = precision_sweep(*task, only({"sbits23"}));
    ASSERT_EQ(r.points.size(), 2u);
    EXPECT_EQ(r.fp_metric, fp);
    for (const SweepPoint& p : r.points) {
      EXPECT_EQ(p.metric, fp) << p.format << " " << rounding_mode_name(p.mode);
      EXPECT_EQ(p.w1, 0.0) << task->arch() << " " << p.format << " " << rounding_mode_name(p.mode);
    }
  }
}

TEST(Sweep, EveryTensorAndActivationLandsOnTheGrid) {
  auto task = resnet20_task(64);
  auto model = task->load_model();
  const Format f = Format::parse("sbits3");
  round_model_tensors(*model, f, RoundingMode::Stochastic, 7);
  for (const NamedTensor& t : model->named_tensors())
    EXPECT_TRUE(torch::equal(*t.tensor, quantize(*t.tensor, f))) << t.name << " is off the sbits3 grid";

  // fp4_e2m1 is scaled per tensor: every activation the view hands on is a multiple of one scale's levels,
  // so it has at most 15 distinct values.
  auto view = emulate_activations(*model, Format::parse("fp4_e2m1"), RoundingMode::NearestEven, 0);
  SiteRecorder rec;
  const torch::Tensor images = torch::rand({4, 3, 32, 32});
  const torch::Tensor logits = view->forward(images, rec);
  EXPECT_LE(std::get<0>(at::_unique(logits)).numel(), 15);
  ASSERT_FALSE(rec.seen.empty());
  // The recorder sees the inner unit's value before the emulator rounds it, so at least one site was not
  // already on a 15-level grid: the view's rounding is what puts it there.
  bool some_off_grid = false;
  for (const auto& s : rec.seen) some_off_grid |= std::get<0>(at::_unique(s)).numel() > 15;
  EXPECT_TRUE(some_off_grid);
}

TEST(Sweep, FewerBitsDoMoreDamageOnResNet20) {
  auto task = resnet20_task(512);
  SweepOptions o = only({"sbits10", "sbits4", "sbits1", "fp4_e2m1"});
  o.modes = {RoundingMode::NearestEven};
  const SweepReport r = precision_sweep(*task, o);
  const auto ne = RoundingMode::NearestEven;
  EXPECT_GT(point(r, "sbits10", ne).w1, 0.0);
  EXPECT_LT(point(r, "sbits10", ne).w1, point(r, "sbits4", ne).w1);
  EXPECT_LT(point(r, "sbits4", ne).w1, point(r, "sbits1", ne).w1);
  EXPECT_NEAR(point(r, "sbits10", ne).metric, r.fp_metric, 1.0);
  EXPECT_LT(point(r, "fp4_e2m1", ne).metric, r.fp_metric - 5.0);
  const std::string table = sweep_table(r);
  EXPECT_NE(table.find("| sbits4 | 4 |"), std::string::npos) << table;
  EXPECT_NE(sweep_csv(r).find("fp4_e2m1,1,0,nearest_even,"), std::string::npos);
}

TEST(Sweep, RefusesAnEmptySweep) {
  auto task = resnet20_task(16);
  SweepOptions o;
  o.weights = o.activations = false;
  expect_error<ConfigError>([&] { precision_sweep(*task, o); }, {"neither weights nor activations"});
  o = only({});
  expect_error<ConfigError>([&] { precision_sweep(*task, o); }, {"no formats"});
}
