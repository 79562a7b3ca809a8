// The fused causal attention against its ATen reference: outputs and all three gradients, grouped kv heads,
// head widths and lengths that are not multiples of the vector width, peaked and flat softmaxes; the same bits at
// any thread count; bad shapes refused by name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "flexquant/attention.h"
#include "flexquant/error.h"

using namespace flexquant;

namespace {

struct Case {
  int64_t B, H, Hkv, T, hd;
  double spread;  // std of q and k: large values give peaked softmax rows
};

std::vector<torch::Tensor> run(bool fused, const torch::Tensor& q0, const torch::Tensor& k0, const torch::Tensor& v0,
                               const torch::Tensor& g, double scale) {
  auto q = q0.clone().requires_grad_(true), k = k0.clone().requires_grad_(true), v = v0.clone().requires_grad_(true);
  torch::Tensor o = fused ? causal_attention(q, k, v, scale) : causal_attention_reference(q, k, v, scale);
  (o * g).sum().backward();
  return {o.detach(), q.grad(), k.grad(), v.grad()};
}

}  // namespace

TEST(CausalAttention, MatchesTheReferenceInValueAndGradients) {
  const std::vector<Case> cases = {{2, 8, 4, 256, 8, 1.0},  // stories260K's layer
                                   {1, 3, 3, 37, 5, 1.0},   {2, 4, 1, 19, 16, 3.0},
                                   {1, 2, 2, 1, 8, 1.0},    {1, 4, 2, 64, 8, 12.0}};
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B" << c.B << " H" << c.H << " Hkv" << c.Hkv << " T" << c.T << " hd" << c.hd
                                      << " spread " << c.spread);
    torch::manual_seed(7);
    auto q = torch::randn({c.B, c.H, c.T, c.hd}) * c.spread, k = torch::randn({c.B, c.Hkv, c.T, c.hd}) * c.spread;
    auto v = torch::randn({c.B, c.Hkv, c.T, c.hd}), g = torch::randn({c.B, c.H, c.T, c.hd});
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.hd));
    auto fused = run(true, q, k, v, g, scale), ref = run(false, q, k, v, g, scale);
    for (size_t i = 0; i < fused.size(); ++i) {
      const double err = (fused[i] - ref[i]).abs().max().item<double>();
      const double mag = ref[i].abs().max().item<double>();
      EXPECT_LE(err, 2e-5 * std::max(1.0, mag)) << names[i] << ": max |fused - reference| " << err << " of " << mag;
    }
  }
}

TEST(CausalAttention, NonContiguousInputsAsTheDecoderPassesThem) {
  torch::manual_seed(3);
  // [B, T, H, hd].transpose(1, 2), as the decoder layer hands them over
  auto q = torch::randn({2, 40, 4, 8}).transpose(1, 2), k = torch::randn({2, 40, 2, 8}).transpose(1, 2);
  auto v = torch::randn({2, 40, 2, 8}).transpose(1, 2);
  auto a = causal_attention(q, k, v, 0.35), b = causal_attention_reference(q, k, v, 0.35);
  EXPECT_LE((a - b).abs().max().item<double>(), 2e-5);
}

TEST(CausalAttention, SameBitsAtAnyThreadCount) {
  torch::manual_seed(5);
  auto q = torch::randn({4, 8, 128, 8}), k = torch::randn({4, 4, 128, 8}), v = torch::randn({4, 4, 128, 8});
  auto g = torch::randn({4, 8, 128, 8});
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  auto one = run(true, q, k, v, g, 0.3);
  at::set_num_threads(2);
  auto two = run(true, q, k, v, g, 0.3);
  at::set_num_threads(before);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << i;
}

TEST(CausalAttention, BadShapesAreRefusedByName) {
  auto q = torch::randn({1, 3, 8, 4}), k = torch::randn({1, 2, 8, 4});
  try {
    causal_attention(q, k, k, 0.5);
    FAIL() << "3 query heads over 2 kv heads accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("causal_attention"), std::string::npos) << e.what();
  }
  EXPECT_THROW(causal_attention(torch::randn({3, 8, 4}), k, k, 0.5), ModelError);
  EXPECT_THROW(causal_attention(torch::randn({}), k, k, 0.5), ModelError);  // no size read before the check
}

TEST(RotaryEmbedding, SameBitsAsTheReferenceForwardAndBackward) {
  torch::manual_seed(13);
  for (auto shape : {std::vector<int64_t>{4, 256, 8, 8}, std::vector<int64_t>{2, 37, 3, 6}}) {
    for (double theta : {10000.0, 500000.0}) {
      SCOPED_TRACE(::testing::Message() << c10::IntArrayRef(shape) << " theta " << theta);
      auto x0 = torch::randn(shape), g = torch::randn(shape);
      auto xa = x0.clone().requires_grad_(true), xb = x0.clone().requires_grad_(true);
      auto ya = rotary_embedding(xa, theta), yb = rotary_embedding_reference(xb, theta);
      EXPECT_TRUE(torch::equal(ya, yb)) << (ya - yb).abs().max().item<double>();
      (ya * g).sum().backward();
      (yb * g).sum().backward();
      EXPECT_TRUE(torch::equal(xa.grad(), xb.grad())) << (xa.grad() - xb.grad()).abs().max().item<double>();
    }
  }
  EXPECT_THROW(rotary_embedding(torch::randn({1, 4, 2, 5}), 1e4), ModelError);
}
