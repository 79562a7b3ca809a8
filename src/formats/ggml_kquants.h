// ggml's k-quants (Q2_K .. Q6_K): 256-weight super-blocks whose sub-blocks of 16 or 32 weights have integer
// scales (and mins) under one or two fp16 super-scales. Internal: the weight grid (quantizer.cpp, scale_dtype
// kquant) and the GGUF types (ggml_types.cpp) are its public faces. Every block is handled through one unpacked form, KBlock, so that the reference quantizer,
// the dequantizer and the packing of flexquant's own codes share one layout description:
//   value = (d * sc[j]) * (q - zq) - (dmin * m[j])      (the last term only for types with mins)
// computed in that order in fp32, as ggml's dequantize_row_* does, so that our dequantization is bit-identical.
#pragma once
#include <cstdint>

#include "flexquant/ggml_types.h"

namespace flexquant::kquant {

constexpr int kSuper = 256;

struct KSpec {
  GgmlType type;
  int sub;          ///< weights per sub-block (16 or 32)
  int bits;         ///< bits per weight code
  bool has_min;     ///< Q2_K, Q4_K, Q5_K: value = d*sc*q - dmin*m; else symmetric: d*sc*(q - zq)
  int scale_lo;     ///< range of the integer sub-block scale (and min) as dequantization uses it
  int scale_hi;
  int zq;           ///< code offset of the symmetric types (Q3_K 4, Q6_K 32), 0 otherwise
  int bytes;        ///< bytes per super-block
  int subs() const { return kSuper / sub; }
};

/// The k-quant layout of t, or nullptr for the other types.
const KSpec* kspec(GgmlType t);
/// The k-quant with `bits`-bit codes in groups of `sub` weights, with or without mins; nullptr if none.
const KSpec* kspec(int bits, int64_t sub, bool has_min);

/// One super-block unpacked: d and dmin are half values held as floats; sc/m the integer scales and mins as
/// dequantization multiplies them; q the stored codes (0 .. 2^bits-1).
struct KBlock {
  float d = 0, dmin = 0;
  int sc[16] = {};
  int m[16] = {};
  uint8_t q[kSuper] = {};
};

void pack(const KSpec& s, const KBlock& b, uint8_t* out);
KBlock unpack(const KSpec& s, const uint8_t* in);
/// 256 floats, exactly as ggml's dequantize_row_* computes them.
void dequantize(const KSpec& s, const KBlock& b, float* y);
/// llama.cpp's reference round-to-nearest of one super-block (quantize_row_*_K_ref), written from its
/// description: per sub-block a least-squares search for scale (and min), the scales quantized under a
/// fp16 super-scale, then every weight re-rounded on the final grid.
KBlock quantize_ref(const KSpec& s, const float* x);
/// The same with an importance matrix (qw: 256 per-column importances of this super-block), as ggml_quantize_chunk
/// rounds with one (quantize_row_*_K_impl).
KBlock quantize_imatrix(const KSpec& s, const float* x, const float* qw);

/// ggml's weighted searches, for the 32-weight types' importance-matrix rounding (ggml_types.cpp):
/// symmetric codes L = l + nmax, l in [-nmax, nmax-1] (make_qx_quants, rmse weights qw); returns the scale.
float qx_search(int n, int nmax, const float* x, int* L, const float* qw);
/// x ~ scale * L - min, L in [0, nmax], weighted by w (make_qkx3_quants' settings); returns scale, *min = min.
float qkx3_search(int n, int nmax, const float* x, const float* w, int* L, float* min);

}  // namespace flexquant::kquant
