// k-quant weight grids (ScaleDtype::KQuant, quantizer.h): llama.cpp's initial grid and the two-level scale
// projection. Internal to fq_quant; quantizer.cpp dispatches to it.
#pragma once
#include "flexquant/quantizer.h"

namespace flexquant::detail {

/// llama.cpp's reference grid of w ([Cout, ...], rows a multiple of 256): per group scale |d * sc|, the zero point
/// (symmetric types: the orientation of the signed scale) and, for the types with mins, offset dmin * m.
/// The scales are not yet projected (a group ggml gives scale 0 holds 0 here; stored_scale makes it d * 1).
QParams kquant_init(const torch::Tensor& w, const WeightQuantSpec& spec);
/// stored_scale for KQuant (see quantizer.h).
torch::Tensor kquant_project(const torch::Tensor& scale, const WeightQuantSpec& spec);

}  // namespace flexquant::detail
