#include "flexquant/adapter.h"

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/linear.h>

namespace flexquant {

torch::Tensor QuantLayer::apply(const torch::Tensor& x, const torch::Tensor& w) const {
  if (kind == LayerKind::Linear) return torch::nn::functional::linear(x, w, bias);
  return torch::conv2d(x, w, bias, {stride, stride}, {padding, padding}, {dilation, dilation}, groups);
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
