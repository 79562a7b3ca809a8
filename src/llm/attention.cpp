// Fused causal attention on CPU (float32). One task per (batch, kv head) runs the query heads that read that kv
// head row by row, FlashAttention's order without its tiling: each row's scores live in a T-float buffer, the
// keys and values are held transposed ([hd, T]) so every inner loop runs over key positions and vectorizes, and
// the backward recomputes the probabilities from the saved log-sum-exp of each row instead of storing [T, T].
// Only the causal half (j <= i) is ever computed. Tasks are independent, so the result does not depend on the
// thread count.
#include "flexquant/attention.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "flexquant/error.h"

// Where GCC can clone for x86-64-v3 (AVX2, FMA) with a run-time pick by CPU features (ifunc), the kernels get
// such a clone too ("arch=haswell" would pick by CPU model and miss every AMD CPU).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FQ_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FQ_VECTOR_CLONES
#endif
#define FQ_INLINE inline __attribute__((always_inline))

namespace flexquant {
namespace {

// exp for x <= 0 (Cephes expf: exp(x) = 2^n * exp(r), |r| <= ln2/2, degree-6 polynomial; ~1 ulp), branch-free so
// the loops that call it vectorize. Below -87 it returns ~1e-38 instead of a denormal or 0.
FQ_INLINE float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, sizeof two_n);
  return p * two_n;
}

// Eight partial accumulators so the reductions vectorize without reassociation flags.
FQ_INLINE float sum_of(const float* x, int64_t n) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) a[u] += x[j + u];
  float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; j < n; ++j) s += x[j];
  return s;
}

FQ_INLINE float dot_of(const float* x, const float* y, int64_t n) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) a[u] += x[j + u] * y[j + u];
  float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

FQ_INLINE float max_of(const float* x, int64_t n) {
  constexpr float lo = -std::numeric_limits<float>::infinity();
  float a[8] = {lo, lo, lo, lo, lo, lo, lo, lo};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) a[u] = x[j + u] > a[u] ? x[j + u] : a[u];
  float m = lo;
  for (int u = 0; u < 8; ++u) m = a[u] > m ? a[u] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// s[j] = scale * q . kt[:, j] for j < n (kt: [hd, T] with row stride T).
FQ_INLINE void scores(const float* q, const float* kt, int64_t T, int64_t hd, int64_t n, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) s[j] = 0;
  for (int64_t d = 0; d < hd; ++d) {
    const float qd = q[d] * scale;
    const float* kd = kt + d * T;
    for (int64_t j = 0; j < n; ++j) s[j] += qd * kd[j];
  }
}

// x [T, hd] -> xt [hd, T].
void transpose_into(const float* x, int64_t T, int64_t hd, float* xt) {
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < hd; ++d) xt[d * T + j] = x[j * hd + d];
}

struct Shape {
  int64_t B, H, Hkv, T, hd;
  int64_t group() const { return H / Hkv; }
};

// One (batch, kv head): out and lse of its query heads.
FQ_VECTOR_CLONES void forward_task(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k,
                                   const float* v, float scale, float* out, float* lse) {
  const int64_t T = sh.T, hd = sh.hd;
  std::vector<float> kt(hd * T), vt(hd * T), p(T);
  const float* kh = k + (b * sh.Hkv + kvh) * T * hd;
  transpose_into(kh, T, hd, kt.data());
  transpose_into(v + (b * sh.Hkv + kvh) * T * hd, T, hd, vt.data());
  for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h) {
    const int64_t base = (b * sh.H + h) * T;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t n = i + 1;
      scores(q + (base + i) * hd, kt.data(), T, hd, n, scale, p.data());
      const float m = max_of(p.data(), n);
      for (int64_t j = 0; j < n; ++j) p[j] = exp_nonpos(p[j] - m);
      const float l = sum_of(p.data(), n);
      float* o = out + (base + i) * hd;
      const float inv = 1.0f / l;
      for (int64_t d = 0; d < hd; ++d) o[d] = dot_of(p.data(), vt.data() + d * T, n) * inv;
      lse[base + i] = m + std::log(l);
    }
  }
}

// One (batch, kv head): dq of its query heads, dk and dv of the kv head (summed over the group).
FQ_VECTOR_CLONES void backward_task(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k,
                                    const float* v, const float* out, const float* lse, const float* dout,
                                    float scale, float* dq, float* dk, float* dv) {
  const int64_t T = sh.T, hd = sh.hd;
  std::vector<float> kt(hd * T), vt(hd * T), dkt(hd * T, 0.f), dvt(hd * T, 0.f), p(T), ds(T);
  const int64_t kv_base = (b * sh.Hkv + kvh) * T * hd;
  transpose_into(k + kv_base, T, hd, kt.data());
  transpose_into(v + kv_base, T, hd, vt.data());
  for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h) {
    const int64_t base = (b * sh.H + h) * T;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t n = i + 1;
      const float* qi = q + (base + i) * hd;
      const float* doi = dout + (base + i) * hd;
      const float* oi = out + (base + i) * hd;
      scores(qi, kt.data(), T, hd, n, scale, p.data());
      const float c = lse[base + i];
      for (int64_t j = 0; j < n; ++j) p[j] = exp_nonpos(p[j] - c);
      float di = 0;  // rowsum(dO * O): the softmax backward's subtracted term
      for (int64_t d = 0; d < hd; ++d) di += doi[d] * oi[d];
      for (int64_t j = 0; j < n; ++j) ds[j] = 0;
      for (int64_t d = 0; d < hd; ++d) {  // ds = dO . V^T, and dV^T += dO^T p
        const float g = doi[d];
        const float* vd = vt.data() + d * T;
        float* dvd = dvt.data() + d * T;
        for (int64_t j = 0; j < n; ++j) {
          ds[j] += g * vd[j];
          dvd[j] += g * p[j];
        }
      }
      for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - di) * scale;  // d(score) with the scale folded in
      float* dqi = dq + (base + i) * hd;
      for (int64_t d = 0; d < hd; ++d) dqi[d] = dot_of(ds.data(), kt.data() + d * T, n);
      for (int64_t d = 0; d < hd; ++d) {
        const float qd = qi[d];
        float* dkd = dkt.data() + d * T;
        for (int64_t j = 0; j < n; ++j) dkd[j] += ds[j] * qd;
      }
    }
  }
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < hd; ++d) {
      dk[kv_base + j * hd + d] = dkt[d * T + j];
      dv[kv_base + j * hd + d] = dvt[d * T + j];
    }
}

Shape shape_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  FQ_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, ModelError, "causal_attention: q ", q.sizes(), ", k ",
           k.sizes(), ", v ", v.sizes(), " -> expected [B, H, T, hd] and [B, Hkv, T, hd]");
  Shape s{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
  FQ_CHECK(k.sizes() == v.sizes() && k.size(0) == s.B && k.size(2) == s.T && k.size(3) == s.hd && s.Hkv > 0 &&
               s.H % s.Hkv == 0,
           ModelError, "causal_attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
           " -> expected k and v [B, Hkv, T, hd] with the heads of q a multiple of Hkv");
  return s;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct CausalAttentionFn : public torch::autograd::Function<CausalAttentionFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, double scale) {
    const Shape sh = shape_of(q_in, k_in, v_in);
    const torch::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    torch::Tensor out = torch::empty_like(q), lse = torch::empty({sh.B, sh.H, sh.T}, q.options());
    const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
    float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
    at::parallel_for(0, sh.B * sh.Hkv, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t)
        forward_task(sh, t / sh.Hkv, t % sh.Hkv, qp, kp, vp, static_cast<float>(scale), op, lp);
    });
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const Shape sh = shape_of(q, k, v);
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const torch::Tensor g = grad_out[0].contiguous();
    torch::Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    at::parallel_for(0, sh.B * sh.Hkv, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t)
        backward_task(sh, t / sh.Hkv, t % sh.Hkv, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                      out.data_ptr<float>(), lse.data_ptr<float>(), g.data_ptr<float>(), scale, dq.data_ptr<float>(),
                      dk.data_ptr<float>(), dv.data_ptr<float>());
    });
    return {dq, dk, dv, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor causal_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         double scale) {
  const Shape sh = shape_of(q, k, v);
  torch::Tensor kk = k, vv = v;
  if (sh.Hkv != sh.H) {
    kk = k.repeat_interleave(sh.group(), 1);
    vv = v.repeat_interleave(sh.group(), 1);
  }
  // One baddbmm does QK^T, the scale and the causal mask (a separate divide and masked_fill cost more on CPU).
  const torch::Tensor causal =
      torch::full({sh.T, sh.T}, -std::numeric_limits<float>::infinity(), q.options()).triu(1);
  const torch::Tensor s = torch::baddbmm(causal, q.reshape({sh.B * sh.H, sh.T, sh.hd}),
                                         kk.reshape({sh.B * sh.H, sh.T, sh.hd}).transpose(1, 2), 1, scale);
  return torch::bmm(torch::softmax(s, -1), vv.reshape({sh.B * sh.H, sh.T, sh.hd})).view({sh.B, sh.H, sh.T, sh.hd});
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  if (!q.is_cpu() || q.scalar_type() != torch::kFloat || k.scalar_type() != torch::kFloat ||
      v.scalar_type() != torch::kFloat)
    return causal_attention_reference(q, k, v, scale);
  return CausalAttentionFn::apply(q, k, v, scale);
}

}  // namespace flexquant
