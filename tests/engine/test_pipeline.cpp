// End-to-end engine tests on the real ResNet-20 / CIFAR-10 and stories260K: block reconstruction lowers the
// loss below round-to-nearest, the .fqz reload reproduces the fake-quantized model bit for bit.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <filesystem>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/ggml_types.h"
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

// stories260K on TinyStories with a short evaluation (4000 tokens) for the LM tests.
std::unique_ptr<Task> stories_task() {
  Workload w;
  w.model = shared_path("data/lm/stories260K.bin");
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = 4000;
  return make_task(w);
}

// ResNet-20 on CIFAR-10 with a short evaluation (500 images).
std::unique_ptr<Task> resnet20_task() {
  Workload w;
  w.model = shared_path("data/cifar10/resnet20.safetensors");
  w.arch = "resnet_cifar";
  w.data = "cifar10:" + shared_path("data/cifar10");
  w.eval_limit = 500;
  return make_task(w);
}

// The LM tests' common setting: weight-only 3-bit per-channel asymmetric (what separates the methods most).
Recipe lm_w3_recipe(const std::string& method) {
  Recipe r;
  r.method = method;
  r.weight_bits = 3;
  r.weight_granularity = "channel";
  r.weight_symmetric = false;
  return r;
}

// lm_w3_recipe on a short run: batch 4 of 8 calibration sequences of 64 tokens.
Recipe short_lm_recipe(const std::string& method, int64_t iters) {
  Recipe r = lm_w3_recipe(method);
  r.iters = iters;
  r.batch = 4;
  r.calib_samples = 8;
  r.calib_seq_len = 64;
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
  auto task = resnet20_task();
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
  Workload other = task->workload();
  other.model = shared_path("data/cifar10/resnet32.safetensors");
  EXPECT_THROW(evaluate_qmodel(*make_task(other), path), flexquant::ModelError);
  std::filesystem::remove(path);
}

// One grid system: FlexRound reconstructs ResNet-20 on the fp4_e2m1 grid (integer 8-bit first/last layers), beats
// round-to-nearest on that grid, and the .fqz keeps the minifloat codes: the reload reproduces the accuracy.
TEST(Engine, MinifloatGridEndToEndWithReload) {
  auto task = resnet20_task();
  auto path = (std::filesystem::temp_directory_path() / "fq_test_r20_fp4.fqz").string();
  Recipe r = small_recipe("flexround", 40);
  r.act_bits = 32;
  r.weight_format = "fp4_e2m1";
  r.weight_granularity = "channel";
  Recipe rtn = r;
  rtn.method = "rtn";
  auto q_rtn = run_method(*task, rtn);
  auto res = run_method(*task, r, path, [](const std::string&) {});
  EXPECT_GT(res.metric, q_rtn.metric) << "FlexRound on fp4_e2m1 did not beat round-to-nearest on the same grid";
  int improved = 0;
  for (auto& u : res.report.units) improved += u.loss_end < u.loss_start;
  EXPECT_GE(improved, 9);
  EXPECT_EQ(evaluate_qmodel(*task, path), res.metric);
  auto model = task->load_model();
  QuantState state;
  load_qmodel(path, *model, state);
  EXPECT_EQ(state.weights.at("layer1.0.conv1").spec.format.name(), "fp4_e2m1");
  EXPECT_EQ(state.weights.at("conv1").spec.format.name(), "uint8");  // first layer: integer 8-bit
  EXPECT_NE(res.label.find("fp4_e2m1"), std::string::npos) << res.label;
  std::filesystem::remove(path);
}

// Multipoint (methods.md §6) end to end: 2-bit points, 1.5 per channel on average, beat 2-bit round-to-nearest; the
// table's code bits per hidden weight is 2 x the points; the .fqz keeps every point (reload reproduces the accuracy);
// GGUF's single-grid types refuse the sum by name.
TEST(Engine, MultipointEndToEndWithReload) {
  auto task = resnet20_task();
  auto path = (std::filesystem::temp_directory_path() / "fq_test_r20_mp.fqz").string();
  Recipe r = small_recipe("multipoint", 0);
  r.act_bits = 32;
  r.weight_bits = 2;
  r.weight_granularity = "channel";
  r.weight_symmetric = true;
  Recipe rtn = r;
  rtn.method = "rtn";
  auto q_rtn = run_method(*task, rtn);
  EXPECT_DOUBLE_EQ(q_rtn.weight_bits, 2.0);
  auto res = run_method(*task, r, path, [](const std::string&) {});
  std::printf("[ multipoint ] ResNet-20 W2: rtn %.2f %%, multipoint %.2f %% at %.3f code bits per hidden weight\n",
              q_rtn.metric, res.metric, res.weight_bits);
  EXPECT_GT(res.metric, q_rtn.metric + 5);
  EXPECT_GT(res.weight_bits, 2.5);
  EXPECT_LE(res.weight_bits, 3.0 + 1e-9);
  EXPECT_EQ(evaluate_qmodel(*task, path), res.metric);
  auto model = task->load_model();
  QuantState state;
  load_qmodel(path, *model, state);
  const QuantizedTensor& q = state.weights.at("layer2.1.conv2");
  EXPECT_FALSE(q.terms.empty());
  flexquant::testing::expect_error<ConfigError>([&] { ggml_pack(GgmlType::Q4_0, q, "layer2.1.conv2"); },
                                                {"multipoint sum", "single-grid method"});
  std::filesystem::remove(path);
}

// A recipe whose weights the output format cannot hold is refused before any work (no progress line, no unit), naming
// the setting that fixes it: a multipoint sum or a non-GGUF grid to .gguf, a minifloat grid or a sum to QDQ .onnx.
TEST(Engine, ExportsRefuseRecipesTheirFormatCannotHoldBeforeAnyWork) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path();
  auto no_work = [](const std::string& line) { ADD_FAILURE() << "work started: " << line; };
  using flexquant::testing::expect_error;
  auto lm = stories_task();
  expect_error<ConfigError>([&] { run_method(*lm, lm_w3_recipe("multipoint"), (dir / "x.gguf").string(), no_work); },
                            {"x.gguf", "multipoint", ".fqz"});
  expect_error<ConfigError>([&] { run_method(*lm, lm_w3_recipe("rtn"), (dir / "y.gguf").string(), no_work); },
                            {"GGUF block type", "weight.scale_dtype=fp16"});
  Workload w;
  w.model = shared_path("data/cifar10/resnet20.onnx");
  w.data = "cifar10:" + shared_path("data/cifar10");
  w.eval_limit = 100;
  auto cnn = make_task(w);
  Recipe fp4 = small_recipe("rtn", 0);
  fp4.weight_format = "fp4_e2m1";
  fp4.act_bits = 32;
  expect_error<ConfigError>([&] { run_method(*cnn, fp4, (dir / "z.onnx").string(), no_work); },
                            {"z.onnx", "fp4_e2m1", "integer"});
  expect_error<ConfigError>([&] { run_method(*cnn, small_recipe("multipoint", 0), (dir / "z.onnx").string(), no_work); },
                            {"multipoint", ".fqz"});
  EXPECT_FALSE(fs::exists(dir / "x.gguf") || fs::exists(dir / "y.gguf") || fs::exists(dir / "z.onnx"));
}

// act.format: LSQ activation steps on a minifloat grid (fp4_e2m1 at every hidden site; the classifier's input stays
// integer at first_last_bits). Block reconstruction lowers the loss, the .fqz keeps the grids, the reload reproduces.
TEST(Engine, MinifloatActivationsEndToEndWithReload) {
  auto task = resnet20_task();
  auto path = (std::filesystem::temp_directory_path() / "fq_test_r20_a_fp4.fqz").string();
  Recipe r = small_recipe("flexround", 30);
  r.act_bits = 32;
  r.act_format = "fp4_e2m1";
  auto res = run_method(*task, r, path, [](const std::string&) {});
  EXPECT_NE(res.label.find("A[fp4_e2m1]"), std::string::npos) << res.label;
  int improved = 0;
  for (auto& u : res.report.units) improved += u.loss_end < u.loss_start;
  EXPECT_GE(improved, 9);
  EXPECT_EQ(evaluate_qmodel(*task, path), res.metric);
  auto model = task->load_model();
  QuantState state;
  load_qmodel(path, *model, state);
  int minifloat = 0, integer = 0;
  for (auto& [key, q] : state.acts) (q->spec().format ? minifloat : integer) += 1;
  EXPECT_GT(minifloat, 10);
  EXPECT_EQ(integer, 1);  // the classifier's input
  Recipe bad;
  bad.act_format = "int8";
  EXPECT_THROW(bad.validate(), ConfigError);
  std::filesystem::remove(path);
}

TEST(Engine, LanguageModelEndToEnd) {
  auto task = stories_task();
  double fp = evaluate_fp(*task);
  Recipe r = lm_w3_recipe("flexround");
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
  auto task = stories_task();
  Recipe r = lm_w3_recipe("gptq");
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

// Issue #4: every method lowers the reconstruction error of the real stories260K decoder layer 0 (7 linears,
// inputs and FP targets from real TinyStories calibration text) below round-to-nearest on the same grid.
// The error is measured on 16 held-back calibration sequences that the optimiser never samples.
TEST(Engine, EveryMethodBeatsNearestOnARealDecoderLayer) {
  auto task = stories_task();
  Recipe base = lm_w3_recipe("rtn");
  base.iters = 60;
  base.batch = 4;
  base.lr = 3e-3;
  base.calib_samples = 32;
  base.calib_seq_len = 64;  // short sequences keep the five layer-0 runs cheap
  auto layer0_error = [&](Recipe r) {
    auto model = task->load_model();
    torch::Tensor calib = task->calibration(r);
    torch::Tensor train = calib.slice(0, 0, 16), held = calib.slice(0, 16, 32);
    Unit& unit = *model->units().at(0);
    torch::Tensor x = model->prologue(held);
    UnitContext fp;
    torch::Tensor y_fp;
    {
      torch::NoGradGuard ng;
      y_fp = unit.forward(x, fp);
    }
    QuantState state;
    quantize(*model, train, r, state, [](const std::string&) {}, /*max_units=*/1);
    QuantizedContext q(state);
    q.begin_unit(unit);
    torch::NoGradGuard ng;
    return (unit.forward(x, q) - y_fp).pow(2).mean().item<double>();
  };
  const Recipe rtn = base;  // lm_w3_recipe("rtn")
  const double e_rtn = layer0_error(rtn);
  for (std::string m : {"gptq", "adaround", "flexround", "lrq"}) {
    Recipe r = base;
    r.method = m;
    if (m == "adaround") r.lr = 1e-2;
    const double e = layer0_error(r);
    std::printf("[ layer0 ] W3 per-channel %-9s MSE %.4e vs RTN %.4e (ratio %.3f)\n", m.c_str(), e, e_rtn, e / e_rtn);
    EXPECT_LT(e, e_rtn) << m;
  }
  // W8A8 per-tensor static: SmoothQuant (alpha 0.5) against plain round-to-nearest at the same bits.
  Recipe a8 = rtn;
  a8.weight_bits = 8;
  a8.act_bits = 8;
  const double e_a8 = layer0_error(a8);
  a8.smooth_alpha = 0.5;
  const double e_sq = layer0_error(a8);
  std::printf("[ layer0 ] W8A8 smoothquant MSE %.4e vs RTN %.4e (ratio %.3f)\n", e_sq, e_a8, e_sq / e_a8);
  EXPECT_LT(e_sq, e_a8) << "smoothquant";
}


TEST(Engine, PerTokenActivationsReconstructWeightOnlyByDefault) {
  // FlexRound's released W4A8 code trains with activations FP: layer 0 (whose input is the same on both
  // paths) must then learn exactly the codes of the weight-only run, and different ones when the dynamic
  // quantizers stay in the loop.
  auto task = stories_task();
  Recipe r = short_lm_recipe("flexround", 40);
  auto layer0_codes = [&](const Recipe& rr) {
    auto model = task->load_model();
    QuantState state;
    quantize(*model, task->calibration(rr), rr, state, [](const std::string&) {}, /*max_units=*/1);
    EXPECT_FALSE(state.weights.empty());
    return state.weights;
  };
  const auto w_only = layer0_codes(r);
  Recipe a8 = r;
  a8.act_bits = 8;
  a8.act_per_token = true;
  a8.kv_bits = 8;
  const auto default_a8 = layer0_codes(a8);
  a8.dynamic_acts_in_loop = true;
  const auto in_loop = layer0_codes(a8);
  int differ = 0;
  for (const auto& [name, qt] : w_only) {
    ASSERT_TRUE(default_a8.count(name) && in_loop.count(name)) << name;
    EXPECT_TRUE(torch::equal(qt.codes, default_a8.at(name).codes)) << name;
    differ += !torch::equal(qt.codes, in_loop.at(name).codes);
  }
  EXPECT_GT(differ, 0) << "the per-token quantizers never reached the loss";
}

// A Llama layer's train step runs as shards (Unit::step_shards) with every feature that reaches inside one: static
// LSQ activation steps (their gradient scaled by the whole batch), QDrop drawn per shard, PD-Quant's loss through
// the later layers. The run must be reproducible, and training must lower each unit's loss below the start grid's.
// Issue #14 item 4: the sharded steps, targets, chains and probes run single-threaded pieces of fixed shape, so a
// language model's run gives the same bits at 1 and 2 threads (before, 58 of 105 stored tensors differed), and so
// does the evaluation of the quantized model.
TEST(Engine, ShardedLanguageModelRunsAreTheSameAtOneAndTwoThreadsAndLearn) {
  auto task = stories_task();
  Recipe r = short_lm_recipe("flexround", 30);
  r.act_bits = 8;
  r.qdrop = 0.5;
  r.pd_weight = 1;
  const torch::Tensor calib = task->calibration(r);
  const int saved = at::get_num_threads();
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    auto model = task->load_model();
    EXPECT_GT(model->units().at(0)->step_shards(), 1) << "the Llama layer no longer asks for shards";
    QuantState state;
    QuantizeReport rep = quantize(*model, calib, r, state, {}, /*max_units=*/2);
    QuantizedContext qctx(state);
    const double ppl = task->evaluate(*model, qctx);  // windows one per thread: the same bits at any thread count
    at::set_num_threads(saved);
    return std::make_tuple(rep, state, ppl);
  };
  auto [rep_a, a, ppl_a] = run(1);
  auto [rep_b, b, ppl_b] = run(2);
  EXPECT_EQ(ppl_a, ppl_b);
  ASSERT_EQ(rep_a.units.size(), 2u);
  for (size_t k = 0; k < rep_a.units.size(); ++k) {
    const UnitReport &x = rep_a.units[k], &y = rep_b.units[k];
    EXPECT_LT(x.loss_end, x.loss_start) << x.name;
    EXPECT_EQ(x.loss_start, y.loss_start) << x.name;
    EXPECT_EQ(x.loss_end, y.loss_end) << x.name;
  }
  for (const auto& [name, qt] : a.weights) {
    EXPECT_TRUE(torch::equal(qt.codes, b.weights.at(name).codes)) << name;
    EXPECT_TRUE(torch::equal(qt.dequantize(), b.weights.at(name).dequantize())) << name;
  }
  for (const auto& [key, q] : a.acts) EXPECT_EQ(q->step(), b.acts.at(key)->step()) << key;
  EXPECT_FALSE(a.acts.empty());
}
