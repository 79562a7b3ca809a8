// GPTQ as a registered method: its codes come from the layer's input Hessian (LayerStats, asked for by its
// registry entry), decided once in init(); nothing is trained, forward is the dequantized codes.
#include "flexquant/error.h"
#include "flexquant/gptq.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

class GptqRounder : public HessianRounder {
 public:
  explicit GptqRounder(const RounderOptions& o) {
    opts_.damp = o.gptq_damp;
    opts_.act_order = o.gptq_act_order;
    opts_.block_size = o.gptq_block_size;
  }
  std::string name() const override { return "gptq"; }
  using HessianRounder::init;
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats& stats) override {
    check_weight_finite(w, "weight");
    check_stats(stats);
    GptqOptions o = opts_;
    // A two-level grid, or a fixed half minimum (Q4_1/Q5_1), is set up front, not re-estimated per column group.
    if (spec.scale_dtype == ScaleDtype::KQuant || has_fp16_min(spec)) o.grid = qp;
    set_codes(gptq_quantize(w, stats.hessian, spec, o), w.device());
  }

 private:
  GptqOptions opts_;
};

}  // namespace

std::unique_ptr<Rounder> make_gptq(const RounderOptions& opts) { return std::make_unique<GptqRounder>(opts); }

}  // namespace flexquant::rounders
