// The Llama layer's elementwise pieces as fused ops: RMSNorm and the SwiGLU gate. On CPU in float32 each is one
// pass forward and one backward instead of 5-15 ATen ops with their autograd nodes and temporaries: at
// stories260K's width (64) a decoder layer's train step is bound by that per-op cost, not by arithmetic. Other
// devices and dtypes take the references below, which are also what the tests compare against.
#pragma once
#include <torch/types.h>

namespace flexquant {

/// x * rsqrt(mean(x^2 over the last dim) + eps) * w; x [..., D], w [D]. Differentiable in x and w.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);
/// The reference: the same formula as ATen ops.
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& w, double eps);

/// silu(gate) * up, elementwise (same shapes). Differentiable in both.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);
/// The reference: torch::silu(gate) * up.
torch::Tensor swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace flexquant
