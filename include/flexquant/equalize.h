// Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019; methods.md): for each pair of
// layers joined by a ReLU(6) (ModelAdapter::equalization_pairs), output channel i of the producer is divided by
// s_i = sqrt(r1_i / r2_i) and input channel i of the consumer multiplied by it, where r1_i is the producer's
// weight range max|W1[i, ...]| and r2_i the consumer's max|W2[:, i, ...]|: both ranges become sqrt(r1_i r2_i),
// so per-tensor grids waste less of their range on one channel. The network function is unchanged (ReLU is
// positively homogeneous; a ReLU6 ceiling is divided by s_i with its channel). A pre-pass before any rounder.
//
// Bias correction, the other half of DFQ, lives in the engine (recipe bias_correction.enabled): after a unit's
// weights are hardened, each layer's bias absorbs the mean output shift its rounding caused on the calibration
// inputs.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>

#include "flexquant/adapter.h"

namespace flexquant {

/// The equalizing scales [C] of one pair: sqrt(r1 / r2), 1 where either range is 0 (a dead channel stays).
torch::Tensor equalization_scales(const QuantLayer& producer, const QuantLayer& consumer);

/// In place: producer weights/bias (and the clip) divided by s per output channel, consumer weights multiplied by
/// s per input channel. ConfigError when s does not match the pair's channel count.
void rescale_pair(const EqualizationPair& pair, const torch::Tensor& s);

/// Equalizes every pair of the model, `iters` sweeps over the pairs in forward order (a layer in two pairs moves
/// twice per sweep; DFQ iterates to convergence). Returns each pair's scales of every sweep ([iters, C]), keyed by
/// pair name, so that apply_equalization() replays them bit for bit on a fresh copy.
/// ConfigError when iters < 1 or the model has no pairs (e.g. an ONNX graph: the adapter declares none).
std::map<std::string, torch::Tensor> equalize_model(ModelAdapter& model, int iters);

/// Applies saved scales (equalize_model's result) to a fresh copy of the model in the same order. ModelError
/// naming `origin` when a key names no pair of this model.
void apply_equalization(ModelAdapter& model, const std::map<std::string, torch::Tensor>& scales,
                        const std::string& origin);

}  // namespace flexquant
