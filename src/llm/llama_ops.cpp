// Fused RMSNorm and SwiGLU for CPU float32 (see llama_ops.h). Rows (RMSNorm) and elements (SwiGLU) are split over
// threads; the norm gain's gradient sums over rows in row order within each column block, so no result depends
// on the thread count.
#include "flexquant/llama_ops.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>

#include "flexquant/error.h"
#include "flexquant/simd.h"

namespace flexquant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool fusable(const torch::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat; }

constexpr int64_t kGrain = 16384;  // floats per parallel chunk

int64_t row_grain(int64_t D) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)); }

// y = (x * r) * w per row, r = 1 / sqrt(mean(x^2) + eps), kept for the backward.
FQ_VECTOR_CLONES void rms_rows(const float* x, const float* w, int64_t lo, int64_t hi, int64_t D, float eps, float* y,
                               float* r) {
  for (int64_t i = lo; i < hi; ++i) {
    const float* xi = x + i * D;
    float ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += xi[d] * xi[d];
    const float ri = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    r[i] = ri;
    float* yi = y + i * D;
    for (int64_t d = 0; d < D; ++d) yi[d] = xi[d] * ri * w[d];
  }
}

// dx = r (g w) - x r^3 / D * sum(g w x) per row.
FQ_VECTOR_CLONES void rms_grad_rows(const float* x, const float* w, const float* r, const float* g, int64_t lo,
                                    int64_t hi, int64_t D, float* dx) {
  for (int64_t i = lo; i < hi; ++i) {
    const float *xi = x + i * D, *gi = g + i * D;
    float dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += gi[d] * w[d] * xi[d];
    const float ri = r[i], c = ri * ri * ri * dot / static_cast<float>(D);
    float* dxi = dx + i * D;
    for (int64_t d = 0; d < D; ++d) dxi[d] = ri * (gi[d] * w[d]) - xi[d] * c;
  }
}

// dw[d] = sum over rows of g x r, columns [lo, hi), rows in order.
FQ_VECTOR_CLONES void rms_grad_gain(const float* x, const float* r, const float* g, int64_t R, int64_t D, int64_t lo,
                                    int64_t hi, float* dw) {
  for (int64_t d = lo; d < hi; ++d) dw[d] = 0;
  for (int64_t i = 0; i < R; ++i)
    for (int64_t d = lo; d < hi; ++d) dw[d] += g[i * D + d] * x[i * D + d] * r[i];
}

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in,
                               double eps) {
    const torch::Tensor x = x_in.contiguous(), w = w_in.contiguous();
    const int64_t D = x.size(-1), R = D > 0 ? x.numel() / D : 0;
    torch::Tensor y = torch::empty_like(x), r = torch::empty({R}, x.options());
    at::parallel_for(0, R, row_grain(D), [&](int64_t lo, int64_t hi) {
      rms_rows(x.data_ptr<float>(), w.data_ptr<float>(), lo, hi, D, static_cast<float>(eps), y.data_ptr<float>(),
               r.data_ptr<float>());
    });
    ctx->save_for_backward({x, w, r});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &r = saved[2];
    const torch::Tensor g = grad_out[0].contiguous();
    const int64_t D = x.size(-1), R = r.numel();
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(x);
      at::parallel_for(0, R, row_grain(D), [&](int64_t lo, int64_t hi) {
        rms_grad_rows(x.data_ptr<float>(), w.data_ptr<float>(), r.data_ptr<float>(), g.data_ptr<float>(), lo, hi, D,
                      dx.data_ptr<float>());
      });
    }
    if (ctx->needs_input_grad(1)) {
      dw = torch::empty_like(w);
      at::parallel_for(0, D, 256, [&](int64_t lo, int64_t hi) {
        rms_grad_gain(x.data_ptr<float>(), r.data_ptr<float>(), g.data_ptr<float>(), R, D, lo, hi,
                      dw.data_ptr<float>());
      });
    }
    return {dx, dw, torch::Tensor()};
  }
};

FQ_INLINE float sigmoid(float g) { return 1.0f / (1.0f + fast_exp(-g)); }

FQ_VECTOR_CLONES void swiglu_fwd(const float* g, const float* u, int64_t lo, int64_t hi, float* y) {
  for (int64_t i = lo; i < hi; ++i) y[i] = g[i] * sigmoid(g[i]) * u[i];
}

// d up = dy silu(g); d gate = dy up sigma(g) (1 + g (1 - sigma(g))).
FQ_VECTOR_CLONES void swiglu_bwd(const float* g, const float* u, const float* dy, int64_t lo, int64_t hi, float* dg,
                                 float* du) {
  for (int64_t i = lo; i < hi; ++i) {
    const float s = sigmoid(g[i]);
    du[i] = dy[i] * (g[i] * s);
    dg[i] = dy[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
  }
}

struct SwiGluFn : public torch::autograd::Function<SwiGluFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& g_in, const torch::Tensor& u_in) {
    const torch::Tensor g = g_in.contiguous(), u = u_in.contiguous();
    torch::Tensor y = torch::empty_like(g);
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      swiglu_fwd(g.data_ptr<float>(), u.data_ptr<float>(), lo, hi, y.data_ptr<float>());
    });
    ctx->save_for_backward({g, u});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &g = saved[0], &u = saved[1];
    const torch::Tensor dy = grad_out[0].contiguous();
    torch::Tensor dg = torch::empty_like(g), du = torch::empty_like(u);
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      swiglu_bwd(g.data_ptr<float>(), u.data_ptr<float>(), dy.data_ptr<float>(), lo, hi, dg.data_ptr<float>(),
                 du.data_ptr<float>());
    });
    return {dg, du};
  }
};

}  // namespace

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt((x * x).mean(-1, /*keepdim=*/true) + eps) * w;  // x * x: pow(2) is a libm call per element
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  FQ_CHECK(x.dim() >= 1 && w.dim() == 1 && w.size(0) == x.size(-1), ModelError, "rms_norm: x ", x.sizes(), ", gain ",
           w.sizes(), " -> expected x [..., D] and gain [D]");
  if (!fusable(x) || !fusable(w)) return rms_norm_reference(x, w, eps);
  return RmsNormFn::apply(x, w, eps);
}

torch::Tensor swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up) { return torch::silu(gate) * up; }

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  FQ_CHECK(gate.sizes() == up.sizes(), ModelError, "swiglu: gate ", gate.sizes(), " and up ", up.sizes(),
           " -> expected the same shape");
  if (!fusable(gate) || !fusable(up)) return swiglu_reference(gate, up);
  return SwiGluFn::apply(gate, up);
}

}  // namespace flexquant
