// LSQ's fake quantization of activations on an integer grid (Esser et al., ICLR 2020; methods.md §7.1):
//   y = clamp(round(x / s), lo, hi) * s,
// gradients: dy/dx = 1 where round(x/s) lies in [lo, hi], else 0; dy/ds = round(x/s) - x/s there, the clamped bound
// elsewhere (s is the step after LSQ's gradient scaling, a 0-dim tensor). On CPU in float32 one fused pass forward
// and one backward, with the step's gradient summed in fixed chunks (the same bits at any thread count); elsewhere
// the ATen composition, which is also the reference the fused op is tested against.
#pragma once
#include <torch/types.h>

namespace flexquant {

torch::Tensor lsq_fake_quant(const torch::Tensor& x, const torch::Tensor& s, double lo, double hi);

/// The slow, obvious reference: x / s, a straight-through round, clamp, times s, as ATen ops.
torch::Tensor lsq_fake_quant_reference(const torch::Tensor& x, const torch::Tensor& s, double lo, double hi);

}  // namespace flexquant
