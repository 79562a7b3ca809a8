#include "flexquant/lsq.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <vector>

#include "flexquant/error.h"
#include "flexquant/simd.h"

namespace flexquant {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task and per partial sum of the step's gradient

FQ_VECTOR_CLONES void lsq_forward(const float* __restrict x, float* __restrict y, int64_t n, float s, float lo,
                                  float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float r = std::nearbyint(x[i] / s);
    r = r < lo ? lo : r;
    r = r > hi ? hi : r;
    y[i] = r * s;
  }
}

// Writes dy/dx * g and returns sum(g * dy/ds) over the chunk.
FQ_VECTOR_CLONES double lsq_backward(const float* __restrict x, const float* __restrict g, float* __restrict gx,
                                     int64_t n, float s, float lo, float hi) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  auto one = [&](int64_t k, float& a) {
    const float v = x[k] / s;
    const float r = std::nearbyint(v);
    const bool in = r >= lo && r <= hi;
    gx[k] = in ? g[k] : 0.0f;
    a += g[k] * (in ? r - v : (r < lo ? lo : hi));
  };
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) one(i + u, acc[u]);
  for (; i < n; ++i) one(i, acc[0]);
  double sum = 0;
  for (float a : acc) sum += a;
  return sum;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LsqFn : public torch::autograd::Function<LsqFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& s, double lo,
                               double hi) {
    // Element-wise: any dense layout (a CNN's channels-last activations) is read and written as it lies.
    const torch::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
    const float sv = s.item<float>();
    torch::Tensor y = torch::empty_like(x);
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, x.numel(), kChunk, [&](int64_t b, int64_t e) {
      lsq_forward(xp + b, yp + b, e - b, sv, static_cast<float>(lo), static_cast<float>(hi));
    });
    ctx->save_for_backward({x, s});
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &s = saved[1];
    const float sv = s.item<float>();
    const float lo = static_cast<float>(ctx->saved_data["lo"].toDouble());
    const float hi = static_cast<float>(ctx->saved_data["hi"].toDouble());
    torch::Tensor g = grad_out[0];
    if (g.strides() != x.strides()) g = torch::empty_like(x).copy_(g);  // the gradient in x's layout
    torch::Tensor gx = torch::empty_like(x);
    const int64_t n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
        partial[c] = lsq_backward(x.data_ptr<float>() + b, g.data_ptr<float>() + b, gx.data_ptr<float>() + b, e - b,
                                  sv, lo, hi);
      }
    });
    double gs = 0;
    for (double p : partial) gs += p;  // in chunk order: independent of the thread count
    return {gx, torch::full_like(s, gs), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor lsq_fake_quant_reference(const torch::Tensor& x, const torch::Tensor& s, double lo, double hi) {
  auto v = x / s;
  auto v_round = v + (torch::round(v) - v).detach();  // straight-through round
  return torch::clamp(v_round, lo, hi) * s;
}

torch::Tensor lsq_fake_quant(const torch::Tensor& x, const torch::Tensor& s, double lo, double hi) {
  FQ_CHECK(s.dim() == 0, ConfigError, "lsq_fake_quant: step ", s.sizes(), " -> must be a 0-dim tensor");
  if (!x.is_cpu() || x.scalar_type() != torch::kFloat || s.scalar_type() != torch::kFloat)
    return lsq_fake_quant_reference(x, s, lo, hi);
  return LsqFn::apply(x, s, lo, hi);
}

}  // namespace flexquant
