// SmoothQuant (src/quant/smoothquant.cpp): the scale formula on hand-made numbers, function preservation on a
// hand-made RMSNorm+Linear pair and on the real stories260K (logits unchanged), and the effect it exists
// for: the per-channel activation ranges of the smoothed inputs are flatter.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "flexquant/error.h"
#include "flexquant/llama.h"
#include "flexquant/lm_eval.h"
#include "flexquant/smoothquant.h"
#include "flexquant/tokenizer.h"
#include "test_data.h"

namespace fq = flexquant;
using fq::testing::shared_path;

namespace {
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& g) {
  return x * torch::rsqrt(x.square().mean(-1, true) + 1e-5) * g;
}

torch::Tensor story_tokens() {
  fq::Tokenizer tok = fq::Tokenizer::load(shared_path("data/lm/tok512.bin"));
  fq::CorpusRange range;
  range.first_paragraph = 0;
  range.last_paragraph = 60;
  torch::Tensor s = fq::corpus_tokens(shared_path("data/lm/tinystories_valid_first.txt"), tok, range);
  return s.slice(0, 0, 4 * 256).reshape({4, 256});
}
}  // namespace

// alpha = 0.5: s_j = sqrt(max|X_j| / max|W_j|), with the weight max taken jointly over both layers.
TEST(SmoothQuant, ScalesFormulaOnHandMadeExample) {
  torch::Tensor a = torch::tensor({4.0f, 1.0f, 9.0f, 0.25f, 0.0f});
  torch::Tensor w1 = torch::tensor({{1.0f, -0.5f, 0.1f, 2.0f, 1.0f}, {-0.25f, 0.5f, -0.9f, 0.0f, 0.0f}});
  torch::Tensor w2 = torch::tensor({{0.5f, 2.0f, 0.1f, -1.0f, 0.0f}});
  // joint column max |W|: {1, 2, 0.9, 2, 1}
  torch::Tensor s = fq::smooth_scales(a, {w1, w2}, 0.5);
  const float expect[5] = {2.0f, std::sqrt(0.5f), std::sqrt(10.0f), std::sqrt(0.125f), 1e-5f};  // last: clamped
  for (int j = 0; j < 5; ++j) EXPECT_NEAR(s[j].item<float>(), expect[j], 1e-6f * std::max(1.0f, expect[j])) << j;
  // alpha = 0.85 and 1: the general power law; alpha = 1 ignores the weights.
  torch::Tensor s85 = fq::smooth_scales(a, {w1, w2}, 0.85);
  EXPECT_NEAR(s85[2].item<float>(), std::pow(9.0, 0.85) / std::pow(0.9, 0.15), 1e-5);
  torch::Tensor s1 = fq::smooth_scales(a, {w1}, 1.0);
  EXPECT_NEAR(s1[0].item<float>(), 4.0f, 1e-6);
  EXPECT_THROW(fq::smooth_scales(a, {w1}, 1.5), fq::ConfigError);
  EXPECT_THROW(fq::smooth_scales(a, {torch::ones({2, 4})}, 0.5), fq::ConfigError);
}

// A hand-made RMSNorm + two Linears sharing its output, with outlier channels: smoothing keeps the outputs
// and equalises the channel maxima of activation and weight (alpha = 0.5: both become sqrt(a_j w_j)).
TEST(SmoothQuant, RmsNormLinearPairUnchanged) {
  torch::manual_seed(0);
  torch::Tensor x = torch::randn({64, 16});
  torch::Tensor g = torch::rand({16}) + 0.5;
  g.index_put_({3}, 20.0);
  g.index_put_({11}, 8.0);
  torch::Tensor wa = torch::randn({8, 16}), wb = torch::randn({5, 16});
  torch::Tensor ya = torch::matmul(rms_norm(x, g), wa.t()), yb = torch::matmul(rms_norm(x, g), wb.t());
  fq::ActAbsMaxObserver obs;
  obs.add(rms_norm(x, g).slice(0, 0, 30));
  obs.add(rms_norm(x, g).slice(0, 30, 64));
  EXPECT_EQ(obs.num_rows(), 64);
  torch::Tensor s = fq::smooth_scales(obs.absmax(), {wa, wb}, 0.5);
  torch::Tensor wa_s = wa.clone(), wb_s = wb.clone(), g_s = g.clone();
  fq::apply_smoothing(g_s, {&wa_s, &wb_s}, s);
  torch::Tensor ya2 = torch::matmul(rms_norm(x, g_s), wa_s.t()), yb2 = torch::matmul(rms_norm(x, g_s), wb_s.t());
  EXPECT_LT((ya2 - ya).abs().max().item<float>(), 1e-5 * ya.abs().max().item<float>());
  EXPECT_LT((yb2 - yb).abs().max().item<float>(), 1e-5 * yb.abs().max().item<float>());
  torch::Tensor act_after = rms_norm(x, g_s).abs().amax(0);
  torch::Tensor w_after = torch::maximum(wa_s.abs().amax(0), wb_s.abs().amax(0));
  EXPECT_TRUE(torch::allclose(act_after, w_after, 1e-5, 1e-6));
  auto ratio = [](const torch::Tensor& m) { return (m.max() / m.min()).item<double>(); };
  EXPECT_LT(ratio(act_after), ratio(obs.absmax()));
}

// The real stories260K: collect the input maxima of every wq / w1 on TinyStories text, smooth all 5 layers
// (alpha 0.5 and 0.85), and the logits stay the same; the smoothed activations' channel ranges are flatter.
TEST(SmoothQuant, RealStoriesModelUnchanged) {
  torch::Tensor tokens = story_tokens();
  int checked = 0, flatter = 0;
  for (double alpha : {0.5, 0.85}) {
    auto model = fq::load_llama2c(shared_path("data/lm/stories260K.bin"));
    torch::NoGradGuard ng;
    torch::Tensor ref = model->forward(tokens);
    fq::ActAbsMaxCollector before = fq::collect_act_absmax(*model, {tokens});
    auto applied = fq::smooth_model(*model, before, alpha);
    EXPECT_EQ(applied.size(), static_cast<size_t>(2 * model->num_layers()));
    torch::Tensor out = model->forward(tokens);
    const double diff = (out - ref).abs().max().item<double>();
    const double scale = ref.abs().max().item<double>();
    EXPECT_LT(diff, 1e-5 * scale) << "alpha " << alpha << " max |dlogit| " << diff << " of max |logit| " << scale;
    fq::ActAbsMaxCollector after = fq::collect_act_absmax(*model, {tokens});
    for (int64_t i = 0; i < model->num_layers(); ++i) {
      for (int idx : {fq::LlamaDecoderLayer::Wq, fq::LlamaDecoderLayer::W1}) {
        const std::string& name = model->layer(static_cast<int>(i)).layers()[idx].name;
        torch::Tensor m0 = before.at(name), m1 = after.at(name);
        const double r0 = (m0.max() / m0.min()).item<double>(), r1 = (m1.max() / m1.min()).item<double>();
        // Not a per-layer guarantee: the new range is sqrt(max|X_j| max|W_j|) at alpha 0.5, whose spread
        // can exceed X's when the weight maxima vary more than the activation maxima (layers.4 wq does).
        flatter += r1 < r0;
        if (alpha == 0.5) {  // max|X'_j| = max|W'_j| = sqrt(max|X_j| max|W_j|)
          auto& ls = model->layer(static_cast<int>(i)).layers();
          torch::Tensor wmax = idx == fq::LlamaDecoderLayer::Wq
                                   ? torch::maximum(torch::maximum(ls[0].weight.abs().amax(0), ls[1].weight.abs().amax(0)),
                                                    ls[2].weight.abs().amax(0))
                                   : torch::maximum(ls[4].weight.abs().amax(0), ls[5].weight.abs().amax(0));
          EXPECT_TRUE(torch::allclose(m1, wmax, 1e-4, 1e-6)) << name;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * 5 * 2);
  EXPECT_GE(flatter, 16) << "SmoothQuant should flatten most layers' activation channel ranges";
}

TEST(SmoothQuant, MissingStatsAndBadScalesThrow) {
  auto model = fq::load_llama2c(shared_path("data/lm/stories260K.bin"));
  EXPECT_THROW(fq::smooth_model(*model, std::map<std::string, torch::Tensor>{}, 0.5), fq::ModelError);
  torch::Tensor g = torch::ones({4}), w = torch::ones({2, 4});
  EXPECT_THROW(fq::apply_smoothing(g, {&w}, torch::tensor({1.0f, 0.0f, 1.0f, 1.0f})), fq::NumericError);
  EXPECT_THROW(fq::apply_smoothing(g, {&w}, torch::ones({3})), fq::ConfigError);
  fq::ActAbsMaxObserver obs;
  obs.add(torch::ones({2, 4}));
  EXPECT_THROW(obs.add(torch::ones({2, 5})), fq::ConfigError);
}
