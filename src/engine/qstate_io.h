// The quantized layers and activation grids of a QuantState as safetensors tensors + JSON, shared by .fqz files
// (qmodel.cpp) and reconstruction checkpoints (checkpoint.cpp). Internal to the engine.
#pragma once
#include <torch/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "flexquant/adapter.h"
#include "flexquant/reconstruct.h"
#include "flexquant/safetensors.h"

namespace flexquant {

/// Codes (bit-packed), scales, zero points and biases of every quantized layer, SmoothQuant scales, and the
/// activation grids. `partial`: layers without a quantized weight are skipped (a checkpoint's unfinished units)
/// instead of being an error.
void write_quant_state(ModelAdapter& model, const QuantState& state, bool partial,
                       std::map<std::string, torch::Tensor>& tensors, nlohmann::json& layers, nlohmann::json& acts);
/// The inverse onto `model` (layers get their dequantized weights). `partial`: layers absent from `layers` stay as
/// they are, and saved SmoothQuant scales are only read, not re-applied (the caller's run applied them already).
void read_quant_state(const SafeTensorsFile& f, const nlohmann::json& layers, const nlohmann::json& acts,
                      ModelAdapter& model, QuantState& state, bool partial);

/// FNV-1a 64 over bytes, continuing from `h` (file_hash and checkpoint fingerprints).
constexpr uint64_t kFnv1aStart = 1469598103934665603ull;
uint64_t fnv1a(uint64_t h, const void* data, size_t n);

nlohmann::json unit_report_to_json(const UnitReport& u);
UnitReport unit_report_from_json(const nlohmann::json& j);

}  // namespace flexquant
