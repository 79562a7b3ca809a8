// Fused causal attention on CPU (float32). One task per (batch, kv head) runs the query heads that read that kv
// head row by row, FlashAttention's order without its tiling: each row's scores live in a T-float buffer, the
// keys and values are held transposed ([hd, T]) so every inner loop runs over key positions and vectorizes, and
// the backward recomputes the probabilities from the saved log-sum-exp of each row instead of storing [T, T].
// Only the causal half (j <= i) is ever computed. Tasks are independent, so the result does not depend on the
// thread count.
#include "flexquant/attention.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "flexquant/error.h"
#include "flexquant/simd.h"

namespace flexquant {
namespace {

// 32 partial accumulators (four vectors, four independent chains) so the reductions vectorize without
// reassociation flags and do not wait on the add latency.
FQ_INLINE float sum_of(const float* x, int64_t n) {
  float a[32] = {};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    for (int u = 0; u < 32; ++u) a[u] += x[j + u];
  float s = 0;
  for (int u = 0; u < 32; ++u) s += a[u];
  for (; j < n; ++j) s += x[j];
  return s;
}

FQ_INLINE float max_of(const float* x, int64_t n) {
  constexpr float lo = -std::numeric_limits<float>::infinity();
  float a[32];
  for (float& v : a) v = lo;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    for (int u = 0; u < 32; ++u) a[u] = x[j + u] > a[u] ? x[j + u] : a[u];
  float m = lo;
  for (float v : a) m = v > m ? v : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

constexpr int64_t kLane = 8;           // key positions per register block; transposed key rows are padded to it
constexpr int64_t kMaxFusedHead = 16;  // wider heads take the reference path (see causal_attention)
// Query rows whose dK / dV updates share one pass over the accumulators (add_rows is written for 4).
constexpr int kRows = 4;

int64_t round_up(int64_t n) { return (n + kLane - 1) / kLane * kLane; }

// Eight floats as one value (GCC/Clang vector extension): one AVX register in the x86-64-v3 clones, two SSE ones
// otherwise. Written out because GCC does not keep an 8-float accumulator array in a register across the d loop.
typedef float Lane __attribute__((vector_size(kLane * sizeof(float))));

FQ_INLINE Lane load_lane(const float* x) {
  Lane v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// Kernels take the head width as a template argument HD where it is 8 (stories260K), so the d loops unroll and
// the per-d accumulators stay in registers (16 would need more than AVX2's 16); HD = 0 reads `hd` at run time.
constexpr int64_t width(int64_t HD, int64_t hd) { return HD > 0 ? HD : hd; }

// s[j] = q . xt[:, j] for j < round_up(n) (xt: [hd, Tp] zero-padded). Each block of 8 is summed over d in a
// register; four blocks at a time, so four independent FMA chains hide the FMA latency.
template <int64_t HD>
FQ_INLINE void row_times(const float* q, const float* xt, int64_t Tp, int64_t hd_rt, int64_t n, float* s) {
  const int64_t hd = width(HD, hd_rt);
  const int64_t nb = round_up(n);
  int64_t j0 = 0;
  for (; j0 + 4 * kLane <= nb; j0 += 4 * kLane) {
    Lane a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t d = 0; d < hd; ++d) {
      const float* x = xt + d * Tp + j0;
      a0 += q[d] * load_lane(x);
      a1 += q[d] * load_lane(x + kLane);
      a2 += q[d] * load_lane(x + 2 * kLane);
      a3 += q[d] * load_lane(x + 3 * kLane);
    }
    std::memcpy(s + j0, &a0, sizeof a0);
    std::memcpy(s + j0 + kLane, &a1, sizeof a1);
    std::memcpy(s + j0 + 2 * kLane, &a2, sizeof a2);
    std::memcpy(s + j0 + 3 * kLane, &a3, sizeof a3);
  }
  for (; j0 < nb; j0 += kLane) {
    Lane a = {};
    for (int64_t d = 0; d < hd; ++d) a += q[d] * load_lane(xt + d * Tp + j0);
    std::memcpy(s + j0, &a, sizeof a);
  }
}

// out[d] = w . xt[d, :nb] for every d (nb a multiple of 8): one pass over w with an accumulator per d, whose
// chains are independent, then one horizontal sum each. A fixed width keeps the accumulators in registers;
// otherwise they live in acc (hd * 8 floats of scratch; plain floats: a std::vector of the vector type would not
// get its 32-byte alignment). Both sum in the same order.
template <int64_t HD>
FQ_INLINE void weighted_rows(const float* w, const float* xt, int64_t Tp, int64_t hd_rt, int64_t nb, float* acc,
                             float* out) {
  auto hsum = [](const Lane& t) { return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7])); };
  if constexpr (HD > 0) {
    Lane a[HD] = {};
    for (int64_t j0 = 0; j0 < nb; j0 += kLane) {
      const Lane wv = load_lane(w + j0);
      for (int64_t d = 0; d < HD; ++d) a[d] += wv * load_lane(xt + d * Tp + j0);
    }
    for (int64_t d = 0; d < HD; ++d) out[d] = hsum(a[d]);
    return;
  }
  const int64_t hd = hd_rt;
  for (int64_t i = 0; i < hd * kLane; ++i) acc[i] = 0;
  for (int64_t j0 = 0; j0 < nb; j0 += kLane) {
    const Lane wv = load_lane(w + j0);
    for (int64_t d = 0; d < hd; ++d) {
      Lane a = load_lane(acc + d * kLane) + wv * load_lane(xt + d * Tp + j0);
      std::memcpy(acc + d * kLane, &a, sizeof a);
    }
  }
  for (int64_t d = 0; d < hd; ++d) out[d] = hsum(load_lane(acc + d * kLane));
}

// x [T, hd] -> xt [hd, Tp], zero in the padding.
void transpose_into(const float* x, int64_t T, int64_t Tp, int64_t hd, float* xt) {
  for (int64_t d = 0; d < hd; ++d)
    for (int64_t j = T; j < Tp; ++j) xt[d * Tp + j] = 0;
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < hd; ++d) xt[d * Tp + j] = x[j * hd + d];
}

struct Shape {
  int64_t B, H, Hkv, T, hd;
  int64_t group() const { return H / Hkv; }
};

// The softmax row of query i: p[j] = exp(q_i . k_j * scale - c) for j <= i, 0 up to the block end; c = the row max
// (forward, returned) or the saved log-sum-exp (backward, `c` given).
template <int64_t HD>
FQ_INLINE float prob_row(const float* qs, const float* kt, int64_t Tp, int64_t hd, int64_t i, const float* lse,
                         float* p) {
  const int64_t n = i + 1;
  row_times<HD>(qs, kt, Tp, hd, n, p);
  const float c = lse ? *lse : max_of(p, n);
  for (int64_t j = 0; j < n; ++j) p[j] = fast_exp(p[j] - c);
  for (int64_t j = n; j < round_up(n); ++j) p[j] = 0;
  return c;
}

// acc[j] += c0 x0[j] + c1 x1[j] + c2 x2[j] + c3 x3[j] for j < n, x_r = x + r * stride (kRows == 4 rows).
FQ_INLINE void add_rows(float* __restrict acc, const float* __restrict x, int64_t stride, float c0, float c1, float c2,
                        float c3, int64_t n) {
  const float *__restrict x0 = x, *__restrict x1 = x + stride, *__restrict x2 = x + 2 * stride,
              *__restrict x3 = x + 3 * stride;
  for (int64_t j = 0; j < n; ++j) acc[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j];
}

// One (batch, kv head): out and lse of its query heads.
template <int64_t HD>
FQ_INLINE void forward_rows(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k, const float* v,
                            float scale, float* out, float* lse) {
  const int64_t T = sh.T, Tp = round_up(T), hd = width(HD, sh.hd);
  std::vector<float> kt(hd * Tp), vt(hd * Tp), p(Tp), qs(hd);
  std::vector<float> acc(hd * kLane);
  transpose_into(k + (b * sh.Hkv + kvh) * T * hd, T, Tp, hd, kt.data());
  transpose_into(v + (b * sh.Hkv + kvh) * T * hd, T, Tp, hd, vt.data());
  for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h) {
    const int64_t base = (b * sh.H + h) * T;
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t d = 0; d < hd; ++d) qs[d] = q[(base + i) * hd + d] * scale;
      const float m = prob_row<HD>(qs.data(), kt.data(), Tp, hd, i, nullptr, p.data());
      const float l = sum_of(p.data(), i + 1);
      float* o = out + (base + i) * hd;
      const float inv = 1.0f / l;
      weighted_rows<HD>(p.data(), vt.data(), Tp, hd, round_up(i + 1), acc.data(), o);
      for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
      lse[base + i] = m + std::log(l);
    }
  }
}

FQ_VECTOR_CLONES void forward_task(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k,
                                   const float* v, float scale, float* out, float* lse) {
  if (sh.hd == 8) forward_rows<8>(sh, b, kvh, q, k, v, scale, out, lse);
  else forward_rows<0>(sh, b, kvh, q, k, v, scale, out, lse);
}

// One (batch, kv head): dq of its query heads, dk and dv of the kv head (summed over the group). Rows go in
// blocks of kRows so the dK^T and dV^T accumulators are read and written once per block.
template <int64_t HD>
FQ_INLINE void backward_rows(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k, const float* v,
                             const float* out, const float* lse, const float* dout, float scale, float* dq, float* dk,
                             float* dv) {
  const int64_t T = sh.T, Tp = round_up(T), hd = width(HD, sh.hd);
  std::vector<float> kt(hd * Tp), vt(hd * Tp), dkt(hd * Tp, 0.f), dvt(hd * Tp, 0.f);
  std::vector<float> p(kRows * Tp, 0.f), ds(kRows * Tp, 0.f), qs(kRows * hd, 0.f), go(kRows * hd, 0.f);
  std::vector<float> acc(hd * kLane);
  const int64_t kv_base = (b * sh.Hkv + kvh) * T * hd;
  transpose_into(k + kv_base, T, Tp, hd, kt.data());
  transpose_into(v + kv_base, T, Tp, hd, vt.data());
  for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h) {
    const int64_t base = (b * sh.H + h) * T;
    for (int64_t i0 = 0; i0 < T; i0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, T - i0));
      const int64_t nb = round_up(i0 + rows);  // every row of the block is zero past its own end
      for (int r = 0; r < kRows; ++r) {
        float* pr = p.data() + r * Tp;
        float* dsr = ds.data() + r * Tp;
        float* qr = qs.data() + r * hd;
        float* gr = go.data() + r * hd;
        const int64_t i = i0 + r;
        if (r >= rows) {  // past T: contributes nothing
          for (int64_t j = 0; j < nb; ++j) pr[j] = dsr[j] = 0;
          for (int64_t d = 0; d < hd; ++d) qr[d] = gr[d] = 0;
          continue;
        }
        const float* qi = q + (base + i) * hd;
        const float* doi = dout + (base + i) * hd;
        const float* oi = out + (base + i) * hd;
        // qr holds q * scale for the scores, then q itself for dK (the scale is already folded into dS).
        for (int64_t d = 0; d < hd; ++d) qr[d] = qi[d] * scale, gr[d] = doi[d];
        prob_row<HD>(qr, kt.data(), Tp, hd, i, lse + base + i, pr);
        for (int64_t j = round_up(i + 1); j < nb; ++j) pr[j] = 0;
        float di = 0;  // rowsum(dO * O): the softmax backward's subtracted term
        for (int64_t d = 0; d < hd; ++d) di += doi[d] * oi[d];
        row_times<HD>(gr, vt.data(), Tp, hd, nb, dsr);  // dP = dO . V^T
        for (int64_t j = 0; j < nb; ++j) dsr[j] = pr[j] * (dsr[j] - di) * scale;  // d(score), scale folded in
        float* dqi = dq + (base + i) * hd;
        weighted_rows<HD>(dsr, kt.data(), Tp, hd, nb, acc.data(), dqi);
        for (int64_t d = 0; d < hd; ++d) qr[d] = qi[d];
      }
      const float* pr = p.data();
      const float* sr = ds.data();
      for (int64_t d = 0; d < hd; ++d) {  // dV^T += dO^T P, dK^T += Q^T dS over the block's rows
        add_rows(dvt.data() + d * Tp, pr, Tp, go[d], go[hd + d], go[2 * hd + d], go[3 * hd + d], nb);
        add_rows(dkt.data() + d * Tp, sr, Tp, qs[d], qs[hd + d], qs[2 * hd + d], qs[3 * hd + d], nb);
      }
    }
  }
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < hd; ++d) {
      dk[kv_base + j * hd + d] = dkt[d * Tp + j];
      dv[kv_base + j * hd + d] = dvt[d * Tp + j];
    }
}

FQ_VECTOR_CLONES void backward_task(const Shape& sh, int64_t b, int64_t kvh, const float* q, const float* k,
                                    const float* v, const float* out, const float* lse, const float* dout,
                                    float scale, float* dq, float* dk, float* dv) {
  if (sh.hd == 8) backward_rows<8>(sh, b, kvh, q, k, v, out, lse, dout, scale, dq, dk, dv);
  else backward_rows<0>(sh, b, kvh, q, k, v, out, lse, dout, scale, dq, dk, dv);
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

// t * theta^(-2j/hd) for t < T, j < hd/2: [T, hd/2] in float64 on `dev` (the fused table and the reference's).
torch::Tensor rope_angles(int64_t T, int64_t hd, double theta, const torch::Device& dev) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64).device(dev);
  const torch::Tensor freq = torch::pow(theta, -2.0 * torch::arange(hd / 2, opts) / static_cast<double>(hd));
  return torch::arange(T, opts).unsqueeze(1) * freq.unsqueeze(0);
}

// cos / sin of rope_angles as float32 ([T, hd/2] each), once per (T, hd, theta, device).
std::pair<torch::Tensor, torch::Tensor> rope_table(int64_t T, int64_t hd, double theta, const torch::Device& dev) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, double, std::string>, std::pair<torch::Tensor, torch::Tensor>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(T, hd, theta, dev.str());
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  torch::NoGradGuard ng;
  const torch::Tensor ang = rope_angles(T, hd, theta, dev);
  auto table = std::make_pair(ang.cos().to(torch::kFloat).contiguous(), ang.sin().to(torch::kFloat).contiguous());
  return cache.emplace(key, table).first->second;
}

// y0 = x0 c - x1 s, y1 = x0 s + x1 c per pair; `inverse` rotates back (the backward). Not cloned: without FMA
// contraction the products round as the reference's separate multiplies do, so the bits match.
void rotate(const float* x, float* y, const float* cs, const float* sn, int64_t B, int64_t T, int64_t H, int64_t hd,
            bool inverse) {
  const int64_t half = hd / 2;
  at::parallel_for(0, B * T, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t bt = lo; bt < hi; ++bt) {
      const float* c = cs + (bt % T) * half;
      const float* s = sn + (bt % T) * half;
      for (int64_t h = 0; h < H; ++h) {
        const float* xp = x + (bt * H + h) * hd;
        float* yp = y + (bt * H + h) * hd;
        for (int64_t j = 0; j < half; ++j) {
          const float x0 = xp[2 * j], x1 = xp[2 * j + 1], sj = inverse ? -s[j] : s[j];
          yp[2 * j] = x0 * c[j] - x1 * sj;
          yp[2 * j + 1] = x0 * sj + x1 * c[j];
        }
      }
    }
  });
}

struct RopeFn : public torch::autograd::Function<RopeFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, double theta) {
    const torch::Tensor x = x_in.contiguous();
    auto [c, s] = rope_table(x.size(1), x.size(3), theta, x.device());
    torch::Tensor y = torch::empty_like(x);
    rotate(x.data_ptr<float>(), y.data_ptr<float>(), c.data_ptr<float>(), s.data_ptr<float>(), x.size(0), x.size(1),
           x.size(2), x.size(3), false);
    ctx->saved_data["theta"] = theta;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const torch::Tensor g = grad_out[0].contiguous();
    auto [c, s] = rope_table(g.size(1), g.size(3), ctx->saved_data["theta"].toDouble(), g.device());
    torch::Tensor gx = torch::empty_like(g);
    rotate(g.data_ptr<float>(), gx.data_ptr<float>(), c.data_ptr<float>(), s.data_ptr<float>(), g.size(0), g.size(1),
           g.size(2), g.size(3), true);
    return {gx, torch::Tensor()};
  }
};

void check_rope_input(const torch::Tensor& x) {
  FQ_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, ModelError, "rotary_embedding: x ", x.sizes(),
           " -> expected [B, T, H, hd] with hd even");
}

}  // namespace

torch::Tensor rotary_embedding_reference(const torch::Tensor& x, double theta) {
  check_rope_input(x);
  const int64_t T = x.size(1), hd = x.size(3);
  const torch::Tensor ang = rope_angles(T, hd, theta, x.device());
  torch::Tensor c = ang.cos().to(x.scalar_type()).view({1, T, 1, hd / 2});
  torch::Tensor s = ang.sin().to(x.scalar_type()).view({1, T, 1, hd / 2});
  torch::Tensor xp = x.reshape({x.size(0), T, x.size(2), hd / 2, 2});
  torch::Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
  return torch::stack({x0 * c - x1 * s, x0 * s + x1 * c}, -1).reshape(x.sizes());
}

torch::Tensor rotary_embedding(const torch::Tensor& x, double theta) {
  check_rope_input(x);
  if (!x.is_cpu() || x.scalar_type() != torch::kFloat) return rotary_embedding_reference(x, theta);
  return RopeFn::apply(x, theta);
}

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
  const Shape sh = shape_of(q, k, v);  // before reading any size: bad shapes get the named error on every path
  // Wide heads: the reference's batched GEMMs win once a head is wider than a few registers (bench_attention:
  // head width 64 at one thread, fused 37 ms vs 24 ms; width 8, fused 4.5 ms vs 9.6 ms).
  if (!q.is_cpu() || q.scalar_type() != torch::kFloat || k.scalar_type() != torch::kFloat ||
      v.scalar_type() != torch::kFloat || sh.hd > kMaxFusedHead)
    return causal_attention_reference(q, k, v, scale);
  return CausalAttentionFn::apply(q, k, v, scale);
}

}  // namespace flexquant
