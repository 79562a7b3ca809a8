// The quantized-model file (.fqz): a safetensors file with packed integer codes, scales, zero points and
// activation grids, plus metadata (recipe, calibration provenance, per-unit report, source model hash).
// Spec: docs/export-format.md. Loading it into the FP model reproduces the fake-quantized model bit for bit.
#pragma once
#include <map>
#include <string>

#include "flexquant/adapter.h"
#include "flexquant/reconstruct.h"

namespace flexquant {

constexpr int kQModelFormatVersion = 3;  // 2: layer specs name their weight format; 3: multipoint terms

struct QModelInfo {
  std::string arch;
  std::string source_model;      ///< path of the FP model as given at quantization
  std::string source_hash;       ///< FNV-1a 64 of the FP model file(s), hex
  std::string recipe_json;
  std::string calibration;       ///< human-readable provenance of the calibration data
  std::string report_json;       ///< per-unit reports
  std::map<std::string, std::string> extra;  ///< free-form provenance (e.g. evaluation protocol)
};

/// Pack unsigned codes (each < 2^bits) into a little-endian bitstream, and back.
torch::Tensor pack_codes(const torch::Tensor& codes_u8, int bits);
torch::Tensor unpack_codes(const torch::Tensor& packed_u8, int bits, int64_t count);

/// FNV-1a 64 of a file, or of every regular file in a directory (sorted by name); hex string.
std::string file_hash(const std::string& path);

/// Writes the .fqz. Returns the file size in bytes.
int64_t save_qmodel(const std::string& path, ModelAdapter& model, const QuantState& state, const QModelInfo& info);

/// Reads a .fqz header without tensors (for inspect and for finding the source model).
QModelInfo read_qmodel_info(const std::string& path);

/// Loads a .fqz into `model` (built from the FP source): replaces every quantized layer's weight with its
/// dequantized codes (and bias), restores activation quantizers into `state`. Checks names and shapes.
QModelInfo load_qmodel(const std::string& path, ModelAdapter& model, QuantState& state);

std::string report_to_json(const QuantizeReport& r);

}  // namespace flexquant
