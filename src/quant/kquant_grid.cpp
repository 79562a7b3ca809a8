// k-quant weight grids: llama.cpp's initial grid and the two-level scale projection (kquant_grid.h).
#include "kquant_grid.h"

#include <fmt/format.h>

#include "../formats/ggml_kquants.h"
#include "flexquant/error.h"

namespace flexquant {
namespace {

constexpr double kMinHalf = 5.9604644775390625e-08;  // 2^-24, the smallest positive half

const kquant::KSpec* spec_of(const WeightQuantSpec& s) {
  if (!s.integer() || s.granularity != Granularity::PerGroup) return nullptr;
  return kquant::kspec(s.bits(), s.group_size, !s.symmetric);
}

// The largest integer sub-scale: the one the largest group gets (Q3_K / Q6_K: the negative end, -32 / -128).
int top_scale(const kquant::KSpec& k) { return k.has_min ? k.scale_hi : -k.scale_lo; }

}  // namespace

std::string kquant_mismatch(const WeightQuantSpec& s, int64_t k) {
  if (s.scale_dtype != ScaleDtype::KQuant) return "the scales are not stored as k-quant scales (weight.scale_dtype=kquant)";
  if (!spec_of(s))
    return fmt::format("{} {} per {} is no k-quant grid -> allowed: weight.bits=2 group_size=16 asymmetric (q2_k), "
                       "bits=3 group_size=16 symmetric (q3_k), bits=4|5 group_size=32 asymmetric (q4_k|q5_k), "
                       "bits=6 group_size=16 symmetric (q6_k), weight.granularity=group",
                       s.format.name(), s.symmetric ? "symmetric" : "asymmetric",
                       s.granularity == Granularity::PerGroup ? fmt::format("group of {}", s.group_size) : to_string(s.granularity));
  if (k > 0 && k % kquant::kSuper != 0)
    return fmt::format("rows of {} weights do not fill the k-quants' 256-weight super-blocks", k);
  return "";
}

namespace detail {

QParams kquant_init(const torch::Tensor& w, const WeightQuantSpec& spec) {
  const kquant::KSpec& ks = *spec_of(spec);
  torch::Tensor rows = w.detach().to(torch::kCPU, torch::kFloat).contiguous().reshape({w.size(0), -1});
  const int64_t cout = rows.size(0), k = rows.size(1), groups = k / ks.sub;
  torch::Tensor scale = torch::empty({cout, groups, 1}), zero = torch::zeros({cout, groups, 1});
  torch::Tensor offset = torch::zeros({cout, groups, 1});
  const float* x = rows.data_ptr<float>();
  float* ps = scale.data_ptr<float>();
  float* pz = zero.data_ptr<float>();
  float* po = offset.data_ptr<float>();
  for (int64_t b = 0; b < cout * k / kquant::kSuper; ++b) {
    const kquant::KBlock kb = kquant::quantize_ref(ks, x + b * kquant::kSuper);
    for (int j = 0; j < ks.subs(); ++j) {
      const int64_t g = b * ks.subs() + j;
      const float dl = kb.d * static_cast<float>(kb.sc[j]);
      ps[g] = std::fabs(dl);
      // Symmetric: a negative scale flips the levels -zq..zq-1 to -(zq-1)..zq, i.e. zero point zq - 1.
      pz[g] = ks.has_min ? 0.f : static_cast<float>(dl < 0 ? ks.zq - 1 : ks.zq);
      po[g] = kb.dmin * static_cast<float>(kb.m[j]);
    }
  }
  auto opt = w.options().dtype(torch::kFloat);
  QParams qp{scale.to(opt), zero.to(opt), ks.has_min ? offset.to(opt) : torch::Tensor()};
  return qp;
}

torch::Tensor kquant_project(const torch::Tensor& scale, const WeightQuantSpec& spec) {
  const kquant::KSpec& ks = *spec_of(spec);
  const int top = top_scale(ks);
  torch::Tensor s = scale.reshape({-1, ks.subs()});  // one row per super-block
  torch::Tensor mx = s.amax(1, /*keepdim=*/true);
  torch::Tensor d = (mx / static_cast<double>(top)).to(torch::kHalf).to(s.scalar_type()).clamp_min(kMinHalf);
  torch::Tensor cap = torch::full_like(s, ks.has_min ? top : top - 1);
  cap.scatter_(1, s.argmax(1, /*keepdim=*/true), static_cast<double>(top));  // the (first) largest group
  torch::Tensor sc = torch::minimum(torch::round(s / d).clamp_min(1), cap);
  return (d * sc).reshape(scale.sizes());
}

}  // namespace detail
}  // namespace flexquant
