// Long runs that lose nothing: a run interrupted after some units and resumed from its checkpoint ends with the
// result of an uninterrupted run, bit for bit (real ResNet-20, FlexRound + QDrop W4A4: learned weights, LSQ steps,
// random batches and QDrop masks all cross the interruption).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/reconstruct.h"
#include "flexquant/runtime.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

namespace {

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted by the test") {}
};

Recipe checkpoint_recipe() {
  Recipe r;
  r.method = "flexround";
  r.weight_bits = 4;
  r.act_bits = 4;
  r.iters = 5;
  r.calib_samples = 32;
  r.batch = 8;
  r.qdrop = 0.5;
  return r;
}

torch::Tensor calibration() {
  return load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin")).images.slice(0, 0, 32);
}

std::unique_ptr<ModelAdapter> resnet20() {
  return load_image_classifier(shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
}

}  // namespace

TEST(Checkpoint, ResumedRunEqualsAnUninterruptedOne) {
  const std::string ckpt = (fs::temp_directory_path() / ("fq_ckpt_" + std::to_string(::getpid()))).string();
  const Recipe r = checkpoint_recipe();
  const torch::Tensor calib = calibration();

  auto whole = resnet20();
  QuantState whole_state;
  QuantizeReport whole_report = quantize_model(*whole, calib, r, whole_state);

  // Stopped as SIGINT stops it (the flag the signal handler sets) while unit 4 reports done: the run stops cleanly
  // before unit 5 with unit 4 checkpointed.
  auto first = resnet20();
  QuantState first_state;
  auto stop_after_4 = [](const std::string& line) {
    if (line.find("[ 4/11]") != std::string::npos && line.find("done") != std::string::npos) request_stop();
  };
  flexquant::testing::expect_error<InterruptedError>(
      [&] { quantize_model(*first, calib, r, first_state, stop_after_4, 0, {ckpt, false}); },
      {"before unit 5/11", "4 finished units are in " + ckpt, "--resume"});
  clear_stop_request();
  ASSERT_TRUE(fs::exists(ckpt));
  // Killed outright (no clean stop) inside unit 5: the checkpoint still holds units 1-4.
  auto killed = resnet20();
  QuantState killed_state;
  auto die_in_5 = [](const std::string& line) {
    if (line.find("[ 5/11]") != std::string::npos) throw Interrupted();
  };
  EXPECT_THROW(quantize_model(*killed, calib, r, killed_state, die_in_5, 0, {ckpt, true}), Interrupted);

  auto resumed = resnet20();
  QuantState state;
  std::vector<std::string> lines;
  QuantizeReport report =
      quantize_model(*resumed, calib, r, state, [&](const std::string& l) { lines.push_back(l); }, 0, {ckpt, true});
  EXPECT_EQ(lines.front(), "resuming after unit 4/11 from " + ckpt);
  ASSERT_EQ(report.units.size(), whole_report.units.size());
  for (size_t k = 0; k < report.units.size(); ++k) {
    EXPECT_EQ(report.units[k].loss_start, whole_report.units[k].loss_start) << report.units[k].name;
    EXPECT_EQ(report.units[k].loss_end, whole_report.units[k].loss_end) << report.units[k].name;
  }
  auto a = resumed->all_layers(), b = whole->all_layers();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i]->weight, b[i]->weight)) << a[i]->name;
    EXPECT_TRUE(torch::equal(state.weights.at(a[i]->name).codes, whole_state.weights.at(a[i]->name).codes));
  }
  ASSERT_EQ(state.acts.size(), whole_state.acts.size());
  for (const auto& [key, q] : whole_state.acts) EXPECT_EQ(state.acts.at(key)->step(), q->step()) << key;

  // A checkpoint belongs to its run: another recipe refuses it instead of mixing two runs.
  Recipe other = r;
  other.weight_bits = 3;
  auto fresh = resnet20();
  QuantState s2;
  flexquant::testing::expect_error<ConfigError>(
      [&] { quantize_model(*fresh, calib, other, s2, {}, 0, {ckpt, true}); }, {"another run", ckpt});
  fs::remove(ckpt);
}
