// FlexRound's fused CPU path (rounders.h: flex_map_fused, flex_backward_fused). The ATen composition in
// flexround.cpp stays the reference and the path for every other grid, device and dtype; tests compare the two.
#include <c10/util/accumulate.h>

#include <cmath>
#include <vector>

#include "flexquant/simd.h"
#include "rounders.h"

namespace flexquant {
namespace rounders {
namespace {

// Where a tensor that broadcasts along the weight's first two dims [O, C, ...] reads element (o, c): 0-dim, or
// sizes (1 | O, 1 | C, 1, ...). Valid false for any other shape.
struct Bcast {
  bool valid = false;
  int64_t so = 0, sc = 0;  // index = o * so + c * sc
  int64_t at(int64_t o, int64_t c) const { return o * so + c * sc; }
};

Bcast bcast(const std::vector<int64_t>& sizes, at::IntArrayRef w) {
  Bcast b;
  if (sizes.empty()) return b.valid = true, b;
  if (sizes.size() != w.size()) return b;
  for (size_t d = 2; d < sizes.size(); ++d)
    if (sizes[d] != 1) return b;
  const bool full_o = sizes[0] == w[0], full_c = sizes[1] == w[1];
  if ((!full_o && sizes[0] != 1) || (!full_c && sizes[1] != 1)) return b;
  b.sc = full_c ? 1 : 0;
  b.so = full_o ? (full_c ? w[1] : 1) : 0;
  b.valid = true;
  return b;
}

bool cpu_float(const torch::Tensor& t) { return t.defined() && t.is_cpu() && t.scalar_type() == torch::kFloat; }

struct MapArgs {
  const float *w, *s1p, *e, *lo;
  float qmax;
  int64_t O, K;  // weight [O, K...]
  int64_t s1_stride;
  float *s1, *S, *r, *q, *out;
  bool* passes;
};

FQ_VECTOR_CLONES void map_kernel(const MapArgs& a) {
  for (int64_t o = 0; o < a.O; ++o) {
    const float s1 = a.s1p[o * a.s1_stride];
    for (int64_t k = o * a.K; k < (o + 1) * a.K; ++k) {
      const float S = s1 * a.e[k];
      const float r = a.w[k] / S;
      const float rr = std::nearbyint(r);
      const float lo = a.lo[k], hi = lo + a.qmax;
      float q = rr < lo ? lo : rr;
      q = q > hi ? hi : q;
      a.s1[k] = s1;
      a.S[k] = S;
      a.r[k] = r;
      a.q[k] = q;
      a.out[k] = s1 * q;
      a.passes[k] = rr == q;
    }
  }
}

}  // namespace

bool flex_map_fused(const torch::Tensor& w, const torch::Tensor& exp_logs, const WeightLevels& levels, FlexMap& m) {
  if (!cpu_float(w) || !w.is_contiguous() || w.dim() < 1 || !levels.format().is_int() || !cpu_float(m.s1p) ||
      !cpu_float(exp_logs) || exp_logs.sizes() != w.sizes())
    return false;
  const int64_t O = w.size(0), K = w.numel() / std::max<int64_t>(1, O);
  if (m.s1p.numel() != 1 && m.s1p.numel() != O) return false;
  const torch::Tensor lo = levels.lowest().contiguous();
  if (!cpu_float(lo) || lo.sizes() != w.sizes()) return false;
  torch::NoGradGuard ng;
  const torch::Tensor e = exp_logs.contiguous(), s1p = m.s1p.contiguous();
  m.s1 = torch::empty_like(w), m.S = torch::empty_like(w), m.r = torch::empty_like(w);
  m.q = torch::empty_like(w), m.out = torch::empty_like(w);
  m.passes = torch::empty(w.sizes(), w.options().dtype(torch::kBool));
  MapArgs a{w.data_ptr<float>(), s1p.data_ptr<float>(), e.data_ptr<float>(), lo.data_ptr<float>(),
            static_cast<float>(levels.format().code_max()), O, K, s1p.numel() == 1 ? 0 : 1,
            m.s1.data_ptr<float>(), m.S.data_ptr<float>(), m.r.data_ptr<float>(), m.q.data_ptr<float>(),
            m.out.data_ptr<float>(), m.passes.data_ptr<bool>()};
  map_kernel(a);
  return true;
}

bool flex_backward_fused(const torch::Tensor& g_in, const torch::Tensor& s1, const torch::Tensor& r,
                         const torch::Tensor& q, const torch::Tensor& passes, const torch::Tensor& S,
                         const std::vector<int64_t>& d1_shape, const std::vector<int64_t>& d3_shape,
                         const std::vector<int64_t>& d4_shape, const std::vector<int64_t>& need, FlexGrads& out) {
  if (!cpu_float(g_in) || !cpu_float(s1) || !cpu_float(r) || !cpu_float(q) || !passes.defined() ||
      passes.scalar_type() != torch::kBool || !s1.is_contiguous() || !r.is_contiguous() || !q.is_contiguous() ||
      !passes.is_contiguous() || (S.defined() && (!cpu_float(S) || !S.is_contiguous())) || r.dim() < 2)
    return false;
  const auto ws = r.sizes();
  const int64_t O = ws[0], C = ws[1], K = r.numel() / std::max<int64_t>(1, O * C);
  const int64_t d1_numel = c10::multiply_integers(d1_shape);
  if (d1_numel != 1 && d1_numel != O) return false;
  const Bcast b3 = bcast(d3_shape, ws), b4 = bcast(d4_shape, ws);
  if (!b3.valid || !b4.valid) return false;
  const torch::Tensor g = g_in.contiguous();
  std::vector<double> a1(d1_numel, 0.0), a3(c10::multiply_integers(d3_shape), 0.0),
      a4(c10::multiply_integers(d4_shape), 0.0);
  torch::Tensor gd2 = need[1] ? torch::empty_like(r) : torch::Tensor();
  torch::Tensor gw = S.defined() ? torch::empty_like(r) : torch::Tensor();
  const float *gp = g.data_ptr<float>(), *s1p = s1.data_ptr<float>(), *rp = r.data_ptr<float>();
  const float* qp = q.data_ptr<float>();
  const bool* pp = passes.data_ptr<bool>();
  const float* Sp = S.defined() ? S.data_ptr<float>() : nullptr;
  float* gd2p = gd2.defined() ? gd2.data_ptr<float>() : nullptr;
  float* gwp = gw.defined() ? gw.data_ptr<float>() : nullptr;
  for (int64_t o = 0; o < O; ++o) {
    double& acc1 = a1[d1_numel == 1 ? 0 : o];
    for (int64_t c = 0; c < C; ++c) {
      double& acc3 = a3[b3.at(o, c)];
      double& acc4 = a4[b4.at(o, c)];
      const int64_t base = (o * C + c) * K;
      for (int64_t k = base; k < base + K; ++k) {
        const float gs = gp[k] * s1p[k];
        // d out/d log S = -s1 r where the rounding did not saturate (STE), 0 where it did.
        const float gl = pp[k] ? -(gs * rp[k]) : 0.0f;
        if (gd2p) gd2p[k] = gl;
        acc1 += gs * qp[k] + gl;  // log s1 enters in S and in the outer multiply
        acc3 += gl;
        acc4 += gl;
        if (gwp) gwp[k] = pp[k] ? gs / Sp[k] : 0.0f;
      }
    }
  }
  auto to_tensor = [&](const std::vector<double>& v, const std::vector<int64_t>& shape) {
    return torch::tensor(v, torch::kFloat64).to(torch::kFloat).reshape(shape);
  };
  if (need[0]) out.d1 = to_tensor(a1, d1_shape);
  out.d2 = gd2;
  if (need[2]) out.d3 = to_tensor(a3, d3_shape);
  if (need[3]) out.d4 = to_tensor(a4, d4_shape);
  out.w = gw;
  return true;
}

}  // namespace rounders
}  // namespace flexquant
