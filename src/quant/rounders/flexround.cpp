// FlexRound (Lee et al., ICML 2023; methods.md §1.1): rounding by element-wise division,
//   S = s1 ⊙ S2 ⊙ s3 [⊙ s4],  q = ⌊W ⊘ S⌉ on the spec's levels (integers: clamp(round, -z, 2^b-1-z); minifloat
//   and power grids: the format's nearest level, saturating),  Ŵ = s1·q,
// every factor learned in log space (delta1..delta4), z fixed from the initial grid. The quantizer is one
// fused autograd op (forward and all four gradients in one pass, STE for round, clamp blocks), shared by LRQ.
// Shapes: w [Cout, ...]; delta1 = log s1 in the qparams shape ([1,1,1] / [Cout,1,1] / [Cout,G,1], broadcast
// through the grouped view); delta2 like w; delta3 [Cout,1,...]; delta4 [1,Cin,1,1] (Conv2d only).
#include <torch/autograd.h>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant {
namespace rounders {

// The grids the fused CPU path serves: one scale per tensor or per output channel.
static bool fused_granularity(Granularity g) { return g == Granularity::PerTensor || g == Granularity::PerChannel; }

FlexMap flex_map(const torch::Tensor& w, const torch::Tensor& s1_0, const torch::Tensor& delta1,
                 const torch::Tensor& delta1_0, const torch::Tensor& delta2, const torch::Tensor& delta3,
                 const torch::Tensor& delta4, const WeightLevels& levels, const WeightQuantSpec& spec,
                 const torch::Tensor& offset) {
  FlexMap m;
  // exp(delta1 - delta1_0) == 1 exactly at init, so s1 == s1_0 and the step-0 codes are RTN's bit for bit.
  m.s1p = stored_scale(s1_0 * torch::exp(delta1 - delta1_0), spec);  // fp16 grids: the value a runtime reads
  torch::Tensor logs = delta2;
  if (delta3.defined()) logs = logs + delta3;
  if (delta4.defined()) logs = logs + delta4;
  const torch::Tensor exp_logs = torch::exp(logs);
  const bool has_offset = offset.defined() && offset.numel() > 0;
  if (!has_offset && fused_granularity(spec.granularity) && flex_map_fused(w, exp_logs, levels, m)) return m;
  m.s1 = expand_to_weight(m.s1p, w.sizes(), spec);
  m.S = m.s1 * exp_logs;
  if (has_offset) {  // w/S + m/s1, written so that at init (exp_logs == 1) it is RTN's (w + m)/s1 bit for bit
    m.off = expand_to_weight(offset, w.sizes(), spec);
    m.r = (w + m.off * exp_logs) / m.S;
    m.q = levels.nearest(m.r);
    m.out = m.s1 * m.q - m.off;
    return m;
  }
  m.r = w / m.S;  // division, as RTN does: w/S must round like w/s1 at init
  m.q = levels.nearest(m.r);
  m.out = m.s1 * m.q;
  return m;
}

QuantizedTensor flex_harden(const FlexMap& m, const FlexGrid& g, at::IntArrayRef shape, const WeightQuantSpec& spec,
                            const std::string& who) {
  const bool s_ok = torch::isfinite(m.s1p).all().item<bool>() && (m.s1p > 0).all().item<bool>();
  const int64_t bad_q = (~torch::isfinite(m.q)).sum().item<int64_t>();
  FQ_CHECK(s_ok && bad_q == 0, NumericError, who, ": the learned grid became invalid (s1 finite and > 0: ",
           s_ok ? "yes" : "no", "; non-finite codes: ", bad_q, " of ", m.q.numel(), ", weight ",
           c10::IntArrayRef(shape), ") -> allowed: finite, positive divisors -> hint: lower recon.lr");
  QuantizedTensor t;
  // Padding gets level 0 (integers: code z): q is zero-padded in the grouped view.
  t.qparams.scale = m.s1p.detach().clone();
  t.qparams.zero_point = g.z.clone();
  if (g.offset.defined()) t.qparams.offset = g.offset.clone();
  t.codes = grouped_levels(spec, t.qparams).to_codes(to_grouped(m.q.reshape(shape), spec));
  t.shape = std::vector<int64_t>(shape.begin(), shape.end());
  t.spec = spec;
  return t;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct FlexRoundFn : public torch::autograd::Function<FlexRoundFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& w, const torch::Tensor& s1_0,
                               const torch::Tensor& delta1, const torch::Tensor& delta1_0,
                               const torch::Tensor& delta2, const torch::Tensor& delta3,
                               const torch::Tensor& delta4, const torch::Tensor& offset, const WeightLevels& levels,
                               const WeightQuantSpec& spec) {
    FlexMap m = flex_map(w, s1_0, delta1, delta1_0, delta2, delta3, delta4, levels, spec, offset);
    // S only when w itself wants a gradient (NUPES learns the transform that produces w); m/s1 only with an offset.
    ctx->save_for_backward({m.s1, m.r, m.q, m.passes.defined() ? m.passes : levels.passes(m.r, m.q),
                            w.requires_grad() ? m.S : torch::Tensor(),
                            m.off.defined() ? m.off / m.s1 : torch::Tensor()});
    ctx->saved_data["gran"] = static_cast<int64_t>(spec.granularity);
    ctx->saved_data["group_size"] = spec.group_size;
    ctx->saved_data["d1"] = delta1.sizes().vec();
    ctx->saved_data["d2"] = delta2.sizes().vec();
    ctx->saved_data["d3"] = delta3.defined() ? delta3.sizes().vec() : std::vector<int64_t>{};
    ctx->saved_data["d4"] = delta4.defined() ? delta4.sizes().vec() : std::vector<int64_t>{};
    ctx->saved_data["need"] = std::vector<int64_t>{int64_t{delta1.requires_grad()}, int64_t{delta2.requires_grad()},
                                                   int64_t{delta3.defined() && delta3.requires_grad()},
                                                   int64_t{delta4.defined() && delta4.requires_grad()}};
    return m.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& s1 = saved[0];
    const auto& r = saved[1];
    const auto& q = saved[2];
    const auto& passes = saved[3];
    const auto& S = saved[4];
    const auto& zr = saved[5];  // m/s1 (grids with an offset)
    const auto need = ctx->saved_data["need"].toIntVector();
    WeightQuantSpec spec;
    spec.granularity = static_cast<Granularity>(ctx->saved_data["gran"].toInt());
    spec.group_size = ctx->saved_data["group_size"].toInt();

    variable_list grads(10);  // one per forward argument; the offset, the levels and the spec get none
    const auto& g = grad_out[0];
    if (!g.defined()) return grads;
    FlexGrads fg;
    const std::vector<int64_t> d1 = ctx->saved_data["d1"].toIntVector(), d3 = ctx->saved_data["d3"].toIntVector(),
                               d4 = ctx->saved_data["d4"].toIntVector();
    if (!zr.defined() && fused_granularity(spec.granularity) &&
        flex_backward_fused(g, s1, r, q, passes, S, d1, d3, d4, need, fg)) {
      grads[0] = fg.w, grads[2] = fg.d1, grads[4] = fg.d2, grads[5] = fg.d3, grads[6] = fg.d4;
      return grads;
    }
    auto gs = g * s1;
    // d out/d log s1 through r = -s1 * r where the rounding of r did not saturate (STE), 0 where it did; through
    // the divisors the same, less the zero point's share m/s1 (which S2..S4 do not divide).
    auto g_r = (gs * r).neg_().masked_fill_(passes.logical_not(), 0);
    auto g_logs = zr.defined() ? (gs * (r - zr)).neg_().masked_fill_(passes.logical_not(), 0) : g_r;
    if (need[0]) {
      // log s1 enters twice: in r (-s1 r, in range) and in the outer multiply (s1 q).
      grads[2] = reduce_to_param(gs * q + g_r, d1, spec);
    }
    if (need[1]) grads[4] = g_logs.sum_to_size(ctx->saved_data["d2"].toIntVector());
    if (need[2]) grads[5] = g_logs.sum_to_size(d3);
    if (need[3]) grads[6] = g_logs.sum_to_size(d4);
    if (S.defined()) grads[0] = (gs / S).masked_fill_(passes.logical_not(), 0);  // d out/d w = s1/S in range
    return grads;
  }
};

class FlexRoundRounder : public Rounder {
 public:
  explicit FlexRoundRounder(const RounderOptions& o) : opts_(o) {}
  std::string name() const override { return "flexround"; }
  double default_lr() const override { return 3e-3; }

  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    check_weight_finite(w, "weight");
    w_ = w.detach().to(torch::kFloat).contiguous();
    spec_ = spec;
    p_.init(w_, spec, qp, opts_);
  }

  torch::Tensor forward(bool) override {
    FQ_INTERNAL_ASSERT(w_.defined(), "flexround rounder used before init()");
    return p_.quantize(w_, spec_);
  }

  std::vector<torch::Tensor> parameters() override { return p_.parameters(opts_); }

  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w_.defined(), "flexround rounder used before init()");
    torch::NoGradGuard ng;
    return flex_harden(p_.map(w_, spec_), p_.grid, w_.sizes(), spec_, "flexround");
  }
  bool takes_offset() const override { return opts_.flexround_min_as_zero_point; }

 private:
  RounderOptions opts_;
  WeightQuantSpec spec_;
  FlexParams p_;
  torch::Tensor w_;
};

}  // namespace

void FlexGrid::init(at::IntArrayRef weight_shape, const torch::TensorOptions& opt, const WeightQuantSpec& spec,
                    const QParams& qp, bool learn_s1) {
  torch::NoGradGuard ng;
  s1_0 = qp.scale.to(opt).contiguous().clone();
  z = qp.zero_point.to(opt).contiguous().clone();
  delta1_0 = torch::log(s1_0);
  delta1 = delta1_0.clone().requires_grad_(learn_s1);
  levels = std::make_shared<WeightLevels>(weight_levels(spec, QParams{s1_0, z, {}}, weight_shape));
  if (qp.offset.defined()) offset = qp.offset.to(opt).contiguous().clone();
}

void FlexParams::init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const RounderOptions& o) {
  torch::NoGradGuard ng;
  grid.init(w.sizes(), w.options(), spec, qp, o.flexround_learn_s1);
  delta2 = torch::zeros_like(w).requires_grad_(true);
  std::vector<int64_t> s3(w.dim(), 1), s4(w.dim(), 1);
  s3[0] = w.size(0);
  if (o.flexround_s3) delta3 = torch::zeros(s3, w.options()).requires_grad_(true);
  if (o.flexround_s4 && w.dim() >= 3) {  // per input channel of a convolution ([1, Cin/groups, 1, 1])
    s4[1] = w.size(1);
    delta4 = torch::zeros(s4, w.options()).requires_grad_(true);
  }
}

std::vector<torch::Tensor> FlexParams::parameters(const RounderOptions& o) const {
  std::vector<torch::Tensor> p;
  if (o.flexround_learn_s1) p.push_back(grid.delta1);
  p.push_back(delta2);
  if (delta3.defined()) p.push_back(delta3);
  if (delta4.defined()) p.push_back(delta4);
  return p;
}

torch::Tensor FlexParams::quantize(const torch::Tensor& w, const WeightQuantSpec& spec) const {
  return flexround_quantize(w, grid.s1_0, grid.delta1, grid.delta1_0, delta2, delta3, delta4, *grid.levels, spec,
                            grid.offset);
}

FlexMap FlexParams::map(const torch::Tensor& w, const WeightQuantSpec& spec) const {
  return flex_map(w, grid.s1_0, grid.delta1, grid.delta1_0, delta2, delta3, delta4, *grid.levels, spec, grid.offset);
}

std::unique_ptr<Rounder> make_flexround(const RounderOptions& opts) {
  return std::make_unique<FlexRoundRounder>(opts);
}

}  // namespace rounders

torch::Tensor flexround_quantize(const torch::Tensor& w, const torch::Tensor& s1_0, const torch::Tensor& delta1,
                                 const torch::Tensor& delta1_0, const torch::Tensor& delta2,
                                 const torch::Tensor& delta3, const torch::Tensor& delta4, const WeightLevels& levels,
                                 const WeightQuantSpec& spec, const torch::Tensor& offset) {
  // libtorch 1.13 custom functions reject undefined inputs: an absent factor is a constant log 0 (x + 0 == x).
  auto absent = [&](const torch::Tensor& t) { return t.defined() ? t : torch::zeros({}, w.options()); };
  // An absent offset is an empty tensor, not a zero: w + 0 would turn -0 into +0.
  const torch::Tensor off = offset.defined() ? offset : torch::empty({0}, w.options());
  return rounders::FlexRoundFn::apply(w, s1_0, delta1, delta1_0, delta2, absent(delta3), absent(delta4), off, levels,
                                      spec);
}

}  // namespace flexquant
