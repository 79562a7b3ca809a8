// The fused RMSNorm and SwiGLU against their ATen references (value and every gradient, widths that are not
// multiples of the vector width, saturated gates); the same bits at any thread count; bad shapes refused by name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "flexquant/error.h"
#include "flexquant/llama_ops.h"

using namespace flexquant;

namespace {

// Output and the gradients of both inputs of op(a, b) under the upstream gradient g.
template <class Op>
std::vector<torch::Tensor> value_and_grads(Op op, const torch::Tensor& a0, const torch::Tensor& b0,
                                           const torch::Tensor& g) {
  auto a = a0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
  torch::Tensor y = op(a, b);
  (y * g).sum().backward();
  return {y.detach(), a.grad(), b.grad()};
}

void expect_close(const std::vector<torch::Tensor>& got, const std::vector<torch::Tensor>& want, double rel) {
  const char* names[] = {"value", "grad of input 0", "grad of input 1"};
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = (got[i] - want[i]).abs().max().item<double>();
    const double mag = want[i].abs().max().item<double>();
    EXPECT_LE(err, rel * std::max(1.0, mag)) << names[i] << ": max |fused - reference| " << err << " of " << mag;
  }
}

}  // namespace

TEST(RmsNorm, MatchesTheReferenceInValueAndGradients) {
  for (auto shape : {std::vector<int64_t>{1, 256, 64}, std::vector<int64_t>{3, 7, 13}, std::vector<int64_t>{5, 288},
                     std::vector<int64_t>{2, 1}}) {
    SCOPED_TRACE(::testing::Message() << c10::IntArrayRef(shape));
    torch::manual_seed(11);
    auto x = torch::randn(shape) * 3, w = torch::randn({shape.back()}), g = torch::randn(shape);
    auto fused = value_and_grads([](auto a, auto b) { return rms_norm(a, b, 1e-5); }, x, w, g);
    auto ref = value_and_grads([](auto a, auto b) { return rms_norm_reference(a, b, 1e-5); }, x, w, g);
    expect_close(fused, ref, 2e-5);
  }
}

TEST(RmsNorm, GainWithoutGradientAndZeroRows) {
  auto x = torch::zeros({2, 8}).requires_grad_(true), w = torch::ones({8});  // rows of zeros: r = 1/sqrt(eps)
  auto y = rms_norm(x, w, 1e-6);
  EXPECT_TRUE(torch::equal(y, torch::zeros({2, 8})));
  y.sum().backward();
  EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
  EXPECT_FALSE(w.grad().defined());
}

TEST(SwiGlu, MatchesTheReferenceInValueAndGradients) {
  for (double spread : {1.0, 40.0}) {  // 40: gates far into both tails of the sigmoid
    SCOPED_TRACE(::testing::Message() << "spread " << spread);
    torch::manual_seed(12);
    auto gate = torch::randn({4, 37, 172}) * spread, up = torch::randn({4, 37, 172}), g = torch::randn({4, 37, 172});
    expect_close(value_and_grads([](auto a, auto b) { return swiglu(a, b); }, gate, up, g),
                 value_and_grads([](auto a, auto b) { return swiglu_reference(a, b); }, gate, up, g), 2e-6);
  }
}

TEST(LlamaOps, SameBitsAtAnyThreadCount) {
  torch::manual_seed(5);
  auto x = torch::randn({4, 256, 64}), w = torch::randn({64}), gx = torch::randn({4, 256, 64});
  auto gate = torch::randn({4, 256, 172}), up = torch::randn({4, 256, 172}), gg = torch::randn({4, 256, 172});
  const int before = at::get_num_threads();
  std::vector<std::vector<torch::Tensor>> runs;
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    auto a = value_and_grads([](auto p, auto q) { return rms_norm(p, q, 1e-5); }, x, w, gx);
    auto b = value_and_grads([](auto p, auto q) { return swiglu(p, q); }, gate, up, gg);
    a.insert(a.end(), b.begin(), b.end());
    runs.push_back(a);
  }
  at::set_num_threads(before);
  for (size_t i = 0; i < runs[0].size(); ++i) EXPECT_TRUE(torch::equal(runs[0][i], runs[1][i])) << i;
}

TEST(LlamaOps, BadShapesAreRefusedByName) {
  try {
    rms_norm(torch::randn({2, 8}), torch::ones({7}), 1e-5);
    FAIL() << "a gain of 7 for rows of 8 accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("rms_norm"), std::string::npos) << e.what();
  }
  EXPECT_THROW(swiglu(torch::randn({2, 8}), torch::randn({2, 9})), ModelError);
}

