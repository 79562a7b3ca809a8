// Cross-layer equalization (see include/flexquant/equalize.h).
#include "flexquant/equalize.h"

#include "flexquant/error.h"

namespace flexquant {
namespace {

// A consumer weight [O, I/g, ...] (Linear: [O, I]) as [g, O/g, I/g, rest]: input channel i = group * I/g + j
// is the slice [group, :, j, :].
torch::Tensor by_input_channel(const QuantLayer& consumer) {
  const torch::Tensor& w = consumer.weight;
  const int64_t g = consumer.kind == LayerKind::Conv2d ? consumer.groups : 1;
  return w.reshape({g, w.size(0) / g, w.size(1), -1});
}

int64_t input_channels(const QuantLayer& consumer) {
  return consumer.weight.size(1) * (consumer.kind == LayerKind::Conv2d ? consumer.groups : 1);
}

}  // namespace

torch::Tensor equalization_scales(const QuantLayer& producer, const QuantLayer& consumer) {
  FQ_CHECK(producer.weight.size(0) == input_channels(consumer), ConfigError, "equalization pair ", producer.name,
           " -> ", consumer.name, ": ", producer.weight.size(0), " output channels feed ", input_channels(consumer),
           " input channels -> the adapter paired layers that are not adjacent");
  const torch::Tensor r1 = producer.weight.detach().abs().reshape({producer.weight.size(0), -1}).amax(1);
  const torch::Tensor r2 = by_input_channel(consumer).detach().abs().amax({1, 3}).reshape(-1);
  const torch::Tensor s = torch::sqrt(r1 / r2);
  return torch::where((r1 > 0) & (r2 > 0), s, torch::ones_like(s));
}

void rescale_pair(const EqualizationPair& p, const torch::Tensor& s_in) {
  torch::NoGradGuard ng;
  const int64_t c = p.producer->weight.size(0);
  FQ_CHECK(s_in.dim() == 1 && s_in.size(0) == c && input_channels(*p.consumer) == c, ConfigError,
           "equalization scales for ", p.name, " have shape ", s_in.sizes(), " -> expected [", c, "]");
  const torch::Tensor s = s_in.to(p.producer->weight.device(), torch::kFloat32);
  std::vector<int64_t> out_shape(p.producer->weight.dim(), 1);
  out_shape[0] = c;
  p.producer->weight = p.producer->weight / s.view(out_shape);
  if (p.producer->bias.defined()) p.producer->bias = p.producer->bias / s;
  if (FoldedBatchNorm& bn = p.producer->bn; bn.defined()) {  // the output y/s is BatchNorm(gamma/s, beta/s) of the same input
    bn.gamma = bn.gamma / s;
    bn.beta = bn.beta / s;
  }
  if (p.clip) *p.clip = *p.clip / s.to(p.clip->device());
  QuantLayer& q = *p.consumer;
  const int64_t g = q.kind == LayerKind::Conv2d ? q.groups : 1;
  q.weight = (by_input_channel(q) * s.view({g, 1, c / g, 1})).reshape(q.weight.sizes()).contiguous();
}

std::map<std::string, torch::Tensor> equalize_model(ModelAdapter& model, int iters) {
  FQ_CHECK(iters >= 1, ConfigError, "cle.iters ", iters, " -> allowed >= 1 sweeps over the layer pairs");
  const std::vector<EqualizationPair> pairs = model.equalization_pairs();
  FQ_CHECK(!pairs.empty(), ConfigError, "cross-layer equalization: model ", model.arch(),
           " declares no layer pairs joined by a ReLU (CNN adapters resnet_cifar, resnet18/50 and mobilenet_v2 do) "
           "-> set cle.iters=0 for this model");
  std::map<std::string, std::vector<torch::Tensor>> sweeps;
  for (int it = 0; it < iters; ++it) {
    for (const EqualizationPair& p : pairs) {
      const torch::Tensor s = equalization_scales(*p.producer, *p.consumer);
      rescale_pair(p, s);
      sweeps[p.name].push_back(s.to(torch::kCPU));
    }
  }
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, list] : sweeps) out[name] = torch::stack(list);
  return out;
}

void apply_equalization(ModelAdapter& model, const std::map<std::string, torch::Tensor>& scales,
                        const std::string& origin) {
  if (scales.empty()) return;
  const std::vector<EqualizationPair> pairs = model.equalization_pairs();
  size_t used = 0;
  int64_t iters = -1;
  for (const EqualizationPair& p : pairs) {
    auto it = scales.find(p.name);
    if (it == scales.end()) continue;
    FQ_CHECK(it->second.dim() == 2 && (iters < 0 || it->second.size(0) == iters), ModelError, origin,
             ": equalization scales of ", p.name, " have shape ", it->second.sizes(), " -> expected [sweeps, channels] "
             "with the same sweeps for every pair; the file is corrupt");
    iters = it->second.size(0);
    ++used;
  }
  FQ_CHECK(used == scales.size(), ModelError, origin, " holds equalization scales for ", scales.size(),
           " layer pairs but this model has ", used, " of them -> the file was quantized from another model");
  // Replayed sweep by sweep, pair by pair, as equalize_model ran: the same divisions in the same order.
  for (int64_t it = 0; it < iters; ++it)
    for (const EqualizationPair& p : pairs)
      if (scales.count(p.name)) rescale_pair(p, scales.at(p.name)[it]);
}

}  // namespace flexquant
