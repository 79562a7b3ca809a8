#include "flexquant/adapter.h"

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/linear.h>

#include <typeinfo>

namespace flexquant {

torch::Tensor QuantLayer::apply(const torch::Tensor& x, const torch::Tensor& w) const {
  if (kind == LayerKind::Linear) return torch::nn::functional::linear(x, w, bias);
  return torch::conv2d(x, w, bias, {stride, stride}, {padding, padding}, {dilation, dilation}, groups);
}

void QuantLayer::to(torch::Device device) {
  weight = weight.to(device);
  if (bias.defined()) bias = bias.to(device);
  if (bn.defined())
    for (torch::Tensor* t : {&bn.gamma, &bn.beta, &bn.mean, &bn.var}) *t = t->to(device);
}

torch::Tensor FoldedBatchNorm::input_from_output(const torch::Tensor& y) const {
  FQ_CHECK(defined(), ModelError, "FoldedBatchNorm::input_from_output: no BatchNorm was folded into this layer");
  FQ_CHECK(y.dim() >= 2 && y.size(1) == gamma.numel(), ModelError, "FoldedBatchNorm::input_from_output: output ",
           y.sizes(), " -> expected [N, ", gamma.numel(), ", ...]");
  // z = (y - beta) * sqrt(var + eps) / gamma + mean
  const torch::Tensor ratio = torch::where(gamma != 0, (var + eps).sqrt() / gamma, torch::zeros_like(gamma));
  std::vector<int64_t> shape(y.dim(), 1);
  shape[1] = gamma.numel();
  return (y - beta.view(shape)) * ratio.view(shape) + mean.view(shape);
}

// Only the FP context itself: a subclass that inherited this could hold state the fork would silently drop.
std::unique_ptr<UnitContext> UnitContext::fork() const {
  return typeid(*this) == typeid(UnitContext) ? std::make_unique<UnitContext>() : nullptr;
}

torch::Tensor ModelAdapter::forward(const torch::Tensor& input, UnitContext& ctx) {
  torch::Tensor x = prologue(input);
  for (Unit* u : units()) {
    ctx.begin_unit(*u);
    x = u->forward(x, ctx);
  }
  return epilogue(x);
}

std::vector<QuantLayer*> ModelAdapter::all_layers() {
  std::vector<QuantLayer*> out;
  for (Unit* u : units())
    for (QuantLayer& l : u->layers()) out.push_back(&l);
  return out;
}

std::vector<NamedTensor> ModelAdapter::named_tensors() {
  std::vector<NamedTensor> out;
  for (QuantLayer* l : all_layers()) {
    out.push_back({l->name + ".weight", TensorRole::Weight, &l->weight, l});
    if (l->bias.defined()) out.push_back({l->name + ".bias", TensorRole::Bias, &l->bias, l});
  }
  return out;
}

}  // namespace flexquant
