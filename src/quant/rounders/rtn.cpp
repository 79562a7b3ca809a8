// Round-to-nearest (ties to even) on the initial grid: the baseline every learned rounder starts from.
#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant::rounders {
namespace {

class RtnRounder : public Rounder {
 public:
  std::string name() const override { return "rtn"; }
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    check_weight_finite(w, "weight");
    w_ = w.detach().to(torch::kFloat).contiguous();
    spec_ = spec;
    qp_ = qp;
  }
  torch::Tensor forward(bool) override {
    FQ_INTERNAL_ASSERT(w_.defined(), "rtn rounder used before init()");
    torch::NoGradGuard ng;
    return fake_quant_rtn(w_, spec_, qp_);
  }
  std::vector<torch::Tensor> parameters() override { return {}; }
  QuantizedTensor harden() override {
    FQ_INTERNAL_ASSERT(w_.defined(), "rtn rounder used before init()");
    return quantize_rtn(w_, spec_, qp_);
  }

 private:
  torch::Tensor w_;
  WeightQuantSpec spec_;
  QParams qp_;
};

}  // namespace

std::unique_ptr<Rounder> make_rtn(const RounderOptions&) { return std::make_unique<RtnRounder>(); }

}  // namespace flexquant::rounders
