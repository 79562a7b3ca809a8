// ggml's tensor types as flexquant grids. A block type stores each run of `block` consecutive weights of a row
// (GGUF's ne0, our input dimension) with a half-precision scale:
//   Q4_0  value = d * (q - 8),  q in 0..15        Q4_1  value = d * q + m,  q in 0..15
//   Q5_0  value = d * (q - 16), q in 0..31        Q5_1  value = d * q + m,  q in 0..31
//   Q8_0  value = d * q,        q in -128..127    (d, m fp16; blocks of 32)
// Q4_0, Q5_0 and Q8_0 are exactly flexquant's symmetric uint<b> grid per group of 32 with fp16 scales
// (weight_spec()), so any method's codes pack into them bit for bit. ggml_quantize_ref is llama.cpp's own
// round-to-nearest (ggml-quants.c, quantize_row_*_ref), written from its public description; it is the
// baseline the exports are compared with, byte for byte against libggml-base in tests/export.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flexquant/quantizer.h"

namespace flexquant {

/// ggml type ids as GGUF stores them (ggml.h's enum ggml_type).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14,
};

struct GgmlTypeInfo {
  GgmlType type;
  const char* name;     ///< "q4_0", as llama.cpp's tools spell it (lower case)
  int64_t block;        ///< weights per block (1 for F32/F16)
  int64_t block_bytes;  ///< bytes per block
};

/// Every type flexquant reads and writes.
const std::vector<GgmlTypeInfo>& ggml_types();
const GgmlTypeInfo& ggml_type_info(GgmlType t);
/// Case-insensitive "q4_0" | "Q4_0" | ...; ConfigError listing the supported types.
GgmlType parse_ggml_type(const std::string& name);
/// The type of a GGUF type id; IoError naming `origin` and the supported ids for any other.
GgmlType ggml_type_from_id(uint32_t id, const std::string& origin);
/// Bytes of `n` weights of one row (n a multiple of the block).
int64_t ggml_row_bytes(GgmlType t, int64_t n);

/// llama.cpp's reference round-to-nearest of `rows` rows of `n` floats (n % block == 0): per block, Q4_0/Q5_0
/// d = (signed value of largest magnitude) / -8 (-16), Q8_0 d = amax / 127, Q4_1/Q5_1 d = (max-min)/15 (31),
/// m = min; codes from x * (1/d) as ggml rounds them. ConfigError when n does not fit the block.
std::vector<uint8_t> ggml_quantize_ref(GgmlType t, const float* x, int64_t rows, int64_t n);
/// llama.cpp's quantizer as ggml_quantize_chunk runs it: with `imatrix` ([n] per-column importance, the mean of
/// squared inputs as llama.cpp's imatrix tool collects it) its importance-weighted searches for every type that
/// takes one (all but F32, F16, Q8_0); without, ggml_quantize_ref.
std::vector<uint8_t> ggml_quantize(GgmlType t, const float* x, int64_t rows, int64_t n, const float* imatrix);
/// Blocks -> floats, as ggml's dequantize_row_* computes them.
std::vector<float> ggml_dequantize(GgmlType t, const uint8_t* data, int64_t rows, int64_t n);

/// The flexquant weight grid that is exactly type t: Q4_0/Q5_0/Q8_0 uint<b> symmetric per group of 32 with fp16
/// scales; Q4_1/Q5_1 the same asymmetric, whose minimum is a half offset (has_fp16_min); the k-quants' kquant grids;
/// nullopt for F32/F16.
std::optional<WeightQuantSpec> ggml_weight_spec(GgmlType t);
/// Why a spec is not type t's grid ("" when it is), naming the recipe setting that fixes it.
std::string ggml_spec_mismatch(GgmlType t, const WeightQuantSpec& spec);
/// Why q is not on type t's grid ("" when it is): its spec (ggml_spec_mismatch), whole 32-weight groups, half scales
/// (and half minima).
std::string ggml_grid_mismatch(GgmlType t, const QuantizedTensor& q);
/// Packs a hardened weight [rows, n] that is on type t's grid into t's blocks. Checks that the packed bytes
/// dequantize to q.dequantize() bit for bit; ConfigError naming `what` otherwise.
std::vector<uint8_t> ggml_pack(GgmlType t, const QuantizedTensor& q, const std::string& what);

}  // namespace flexquant
