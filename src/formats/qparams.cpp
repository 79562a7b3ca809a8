// ScaleParams helpers: granularity names and the min-max (absmax) scale choice that round-to-nearest uses.
#include <cmath>

#include "flexquant/error.h"
#include "flexquant/format.h"

namespace flexquant {

Granularity parse_granularity(const std::string& name) {
  const std::string n = name.rfind("per_", 0) == 0 ? name.substr(4) : name;
  if (n == "tensor") return Granularity::PerTensor;
  if (n == "channel") return Granularity::PerChannel;
  if (n == "group") return Granularity::PerGroup;
  throw ConfigError(detail::concat("granularity \"", name, "\" is not valid -> allowed: tensor | channel | group"));
}

std::string to_string(Granularity g) {
  switch (g) {
    case Granularity::PerTensor: return "tensor";
    case Granularity::PerChannel: return "channel";
    case Granularity::PerGroup: return "group";
  }
  return "?";
}

ScaleParams ScaleParams::per_tensor(float scale, int32_t zero_point) {
  ScaleParams q;
  q.scale = torch::full({1}, scale, torch::kFloat);
  if (zero_point != 0) q.zero_point = torch::full({1}, zero_point, torch::kInt);
  return q;
}

ScaleParams minmax_scale_params(const torch::Tensor& x_in, const Format& f, Granularity g, int64_t group_size,
                       bool symmetric) {
  FQ_CHECK(symmetric || f.is_int(), ConfigError, "asymmetric (zero-point) quantization needs an integer format; ",
           f.name(), " is symmetric by construction; hint: pass symmetric = true");
  torch::Tensor x = x_in.detach().to(torch::kFloat).contiguous();
  FQ_CHECK(x.numel() > 0, ConfigError, "minmax_scale_params: empty tensor");
  torch::Tensor rows;  // [P, n]: one row per parameter
  ScaleParams qp;
  qp.granularity = g;
  if (g == Granularity::PerTensor) {
    rows = x.reshape({1, -1});
  } else {
    FQ_CHECK(x.dim() >= 1, ConfigError, to_string(g), " needs a tensor with an output-channel axis");
    const int64_t C = x.size(0), K = x.numel() / C;
    rows = x.reshape({C, K});
    if (g == Granularity::PerGroup) {
      FQ_CHECK(group_size >= 1, ConfigError, "group_size ", group_size, " is not valid: allowed >= 1");
      qp.group_size = group_size;
      const int64_t G = (K + group_size - 1) / group_size;
      // Zero padding changes neither max|x| nor min(x, 0) / max(x, 0).
      rows = torch::constant_pad_nd(rows, {0, G * group_size - K}).reshape({C * G, group_size});
    }
  }
  const float qmax = float(f.max_value());
  torch::Tensor scale, zp;
  if (symmetric) {
    scale = rows.abs().amax(1) / qmax;
  } else {
    const float qlo = float(f.code_min()), qhi = float(f.code_max());
    torch::Tensor lo = rows.amin(1).clamp_max(0), hi = rows.amax(1).clamp_min(0);
    scale = (hi - lo) / (qhi - qlo);
    scale = torch::where(scale > 0, scale, torch::ones_like(scale));
    zp = (qlo - torch::round(lo / scale)).clamp(qlo, qhi).to(torch::kInt);
  }
  scale = torch::where(scale > 0, scale, torch::ones_like(scale));
  if (g == Granularity::PerGroup) {
    const int64_t C = x.size(0);
    scale = scale.reshape({C, -1});
    if (zp.defined()) zp = zp.reshape({C, -1});
  }
  qp.scale = scale.contiguous();
  if (zp.defined()) qp.zero_point = zp.contiguous();
  return qp;
}

}  // namespace flexquant
