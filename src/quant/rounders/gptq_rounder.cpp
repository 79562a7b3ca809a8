// GPTQ as a registered method: its codes come from the layer's input Hessian (LayerStats, asked for by its
// registry entry), decided once in init(); nothing is trained, forward is the dequantized codes.
#include "flexquant/error.h"
#include "flexquant/gptq.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

class GptqRounder : public Rounder {
 public:
  explicit GptqRounder(const RounderOptions& o) {
    opts_.damp = o.gptq_damp;
    opts_.act_order = o.gptq_act_order;
    opts_.block_size = o.gptq_block_size;
  }
  std::string name() const override { return "gptq"; }
  void init(const torch::Tensor&, const WeightQuantSpec&, const QParams&) override {
    throw ConfigError("gptq needs the layer's input Hessian -> call init(w, spec, qp, stats) with stats.hessian "
                      "(the engine does this because gptq's registry entry sets needs.hessian)");
  }
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats& stats) override {
    check_weight_finite(w, "weight");
    FQ_CHECK(stats.hessian.defined(), ConfigError, "gptq: no Hessian in the layer statistics -> the engine must "
             "collect one (MethodNeeds::hessian)");
    GptqOptions o = opts_;
    // A two-level grid, or a fixed half minimum (Q4_1/Q5_1), is set up front, not re-estimated per column group.
    if (spec.scale_dtype == ScaleDtype::KQuant || has_fp16_min(spec)) o.grid = qp;
    q_ = gptq_quantize(w, stats.hessian, spec, o);
    w_ = q_.dequantize().to(w.device());
  }
  torch::Tensor forward(bool) override {
    FQ_INTERNAL_ASSERT(w_.defined(), "gptq rounder used before init()");
    return w_;
  }
  std::vector<torch::Tensor> parameters() override { return {}; }
  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w_.defined(), "gptq rounder used before init()");
    return q_;
  }

 private:
  GptqOptions opts_;
  QuantizedTensor q_;
  torch::Tensor w_;
};

}  // namespace

std::unique_ptr<Rounder> make_gptq(const RounderOptions& opts) { return std::make_unique<GptqRounder>(opts); }

}  // namespace flexquant::rounders
