// QDQ ONNX out: the source ONNX model with every quantized weight stored as its integer codes behind a
// DequantizeLinear (per-tensor or per-channel scale and zero point) and every quantized activation site as
// Clip -> QuantizeLinear -> DequantizeLinear with the learned step, the form ONNX Runtime, TensorRT and OpenVINO
// take. The codes written are the codes of the QuantState (the last reconstruction forward pass), so
// DequantizeLinear gives back bit for bit the weights flexquant evaluated.
//
// 4-bit and narrower codes are held in uint8 (int4 types need opset 21, whose other ops differ from the opset
// 11-17 models exporters write); the Clip bounds the activation codes to the recipe's width, which a uint8
// QuantizeLinear alone would not.
#pragma once
#include <cstdint>
#include <string>

#include "flexquant/adapter.h"
#include "flexquant/reconstruct.h"

namespace flexquant {

struct QdqExportReport {
  int64_t bytes = 0;
  int weights_quantized = 0;  ///< layers written as codes + DequantizeLinear
  int weights_float = 0;      ///< layers left in float (not quantized, e.g. W32)
  int activation_sites = 0;   ///< Clip/QuantizeLinear/DequantizeLinear triples
  int batchnorms_folded = 0;  ///< BatchNormalization nodes replaced by the folded conv weights
};

/// Why weights quantized with `spec` cannot be QDQ ONNX ("" when they can), naming the recipe setting that fixes it:
/// the exporter's check, also run on the recipe before any work (`quantize --out model.onnx`).
std::string qdq_spec_mismatch(const WeightQuantSpec& spec);

/// Writes `out` (to a temporary name, renamed at the end) from the ONNX file the model was loaded from and the
/// quantized model and state. ConfigError naming the layer for a grid QDQ cannot express (minifloat and power
/// grids, per-group scales: DequantizeLinear takes integers with per-tensor or per-channel parameters up to
/// opset 20) and for per-channel scales on a model below opset 13; IoError when `out` cannot be written.
QdqExportReport export_qdq_onnx(const std::string& source_onnx, ModelAdapter& quantized, const QuantState& state,
                                const std::string& out);

}  // namespace flexquant
