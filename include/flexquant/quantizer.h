// Weight-quantization primitives shared by every weight method (RTN, AdaRound, FlexRound, LRQ, GPTQ), on any
// grid a Format describes: integers (with a per-group zero point), minifloats ExMy and power grids (symmetric).
//
// One weight->code map for training and export (methods.md §10.4): a weight W of shape [Cout, ...] is seen in
// its *grouped view* Wg = [Cout, G, g] (the input dims flattened and zero-padded to G*g; per-tensor and
// per-channel use G = 1, g = numel/Cout). Scales and zero points broadcast against Wg:
//   per-tensor [1,1,1], per-channel [Cout,1,1], per-group [Cout,G,1].
// Every method rounds through WeightLevels (below): value = scale * level, with the format's levels at unit scale.
// Integer codes are unsigned, code in [0, 2^b-1], value = scale * (code - zero_point). Symmetric grids use the constant
// zero_point 2^(b-1) (so q = code - z spans -2^(b-1) .. 2^(b-1)-1). Zero padding is exact because 0 is always
// on the grid (the range is forced to contain 0).
//
// Initial grids (init_qparams), per group (per-tensor = one group of the whole tensor):
//   asymmetric MinMax: min <- min(min,0), max <- max(max,0); scale = max((max-min)/(2^b-1), 1e-8);
//                      z = clamp(-round(min/scale), 0, 2^b-1)                     (FlexRound LLM code)
//   symmetric  MinMax: M = max|w|; scale = max(2M/(2^b-1), 1e-8); z = 2^(b-1)       (FlexRound CNN code [C3])
//     Why 2M/(2^b-1) and not M/(2^(b-1)-1): the rounding bins of the codes -2^(b-1) .. 2^(b-1)-1 span
//     [-(2^(b-1)+0.5)s, (2^(b-1)-0.5)s], which covers [-M, M] exactly at s = 2M/(2^b-1): the finest grid that
//     clips nothing. The top code rounds +M down by s/2 at most; -2^(b-1) is used.
//   asymmetric Mse: 2-D L2.4 search, 100 range fractions i/100 of (max-min) x every zero point 0..2^b-1
//                   (FlexRound LLM code, methods.md §1.2). A one-signed group needs no separate 1-D search:
//                   its 1-D candidates (zero point 0 or 2^b-1) are a subset of the 2-D grid.
//   symmetric  Mse: 80 shrink steps M(1-0.01i), i = 0..79 (FlexRound CNN code / BRECQ), L2.4 error.
// The candidate i = 100 (asymmetric) / i = 0 (symmetric) is bit-identical to MinMax, so Mse is never worse than
// MinMax in L2.4 error. An all-zero group gets scale 1e-8 and z = 0 (symmetric: 2^(b-1)): no NaN.
// Minifloat and power grids (symmetric only, zero point 0): MinMax scale = max|w| / max_value (the largest
// level lands on max|w|); Mse = the same 80 shrink steps M(1-0.01i) / max_value scored by L2.4 error.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flexquant/format.h"

namespace flexquant {

/// The initial grid: Mse = L2.4 shrink search, MinMax = the full range, Signed = symmetric integers only, llama.cpp's
/// Q4_0/Q5_0/Q8_0 orientation: per group, scale max|w| / 2^(b-1) and the zero point 2^(b-1) - 1 or 2^(b-1), so that
/// the weight of largest magnitude lands exactly on the extra level (+2^(b-1) or -2^(b-1)) on its own side.
enum class ScaleInit { MinMax, Mse, Signed };

/// Storage of the group scales.
///   Fp32:   as learned.
///   Fp16:   IEEE half, kept >= 2^-24 (GGUF's Q4_0 / Q5_0 / Q8_0).
///   KQuant: ggml's k-quant two-level scales: every 256 weights (a super-block) share a fp16 super-scale d and
///           each group's scale is d * sc with an integer sc (Q2_K 4 bits, Q3_K / Q4_K / Q5_K 6 bits, Q6_K 8 bits);
///           the asymmetric types store a per-group offset dmin * m instead of a zero point (QParams::offset).
///           The grid is fixed by bits, group size and symmetry: uint2 g16 asymmetric = Q2_K, uint3 g16 symmetric =
///           Q3_K, uint4 / uint5 g32 asymmetric = Q4_K / Q5_K, uint6 g16 symmetric = Q6_K; rows a multiple of 256.
///           Initial grid: llama.cpp's own search (its reference quantizer), in canonical form (kquant_scales).
enum class ScaleDtype { Fp32, Fp16, KQuant };
std::string to_string(ScaleDtype s);
ScaleDtype parse_scale_dtype(const std::string& s);   ///< "fp32" | "fp16" | "kquant"

std::string to_string(ScaleInit s);
ScaleInit parse_scale_init(const std::string& s);     ///< "minmax" | "mse" | "signed"

/// How one weight tensor is quantized.
struct WeightQuantSpec {
  /// The level set: integers as uint<b> (b = 2..8; codes 0..2^b-1 with a zero point), or a minifloat / power
  /// grid of at most 8 bits (fp4_e2m1, fp6_e3m2, fp8_e4m3, pow4_a0.5, ...), which is symmetric.
  Format format = Format(IntFormat{4, false});
  bool symmetric = false;                         ///< false: per-group zero point (asymmetric; integers only)
  Granularity granularity = Granularity::PerChannel;
  int64_t group_size = 128;                       ///< PerGroup only; capped at the row length
  ScaleInit init = ScaleInit::Mse;                ///< L2.4 search (methods.md §1.2 / §10.12), min/max or signed
  /// How scales are stored; every scale, initial or learned, is projected onto it (stored_scale) before use, so
  /// the dequantized weight is exactly what a runtime computes from the stored values.
  ScaleDtype scale_dtype = ScaleDtype::Fp32;
  int bits() const { return format.bits(); }
  bool integer() const { return format.is_int(); }
};

/// True for the asymmetric integer grids with fp16 scales: their zero point is stored as a half-precision offset
/// (GGUF's Q4_1 / Q5_1: value = d * code + m, m = -offset), which init_qparams sets and no method changes.
inline bool has_fp16_min(const WeightQuantSpec& s) {
  return s.integer() && !s.symmetric && s.scale_dtype == ScaleDtype::Fp16;
}

/// The integer format of `bits`-bit weight codes (uint<bits>: codes 0..2^bits-1 around a zero point).
Format int_weight_format(int bits);

/// Grid parameters in the grouped view (the format is the spec's). Integers: q_lo = -zero_point,
/// q_hi = 2^b-1-zero_point bound q = round(w/scale); other formats: zero_point is 0.
struct QParams {
  torch::Tensor scale;       ///< fp32, > 0
  torch::Tensor zero_point;  ///< fp32, integer-valued, in [0, 2^b-1]
  /// Undefined, or (k-quants with mins; asymmetric fp16 grids, whose minimum is a half like Q4_1/Q5_1's) fp32 in the
  /// parameter shape: value = scale * level - offset, with the zero point 0. Methods never see it: make_rounder's
  /// rounders work on w + offset (as ggml rounds (x + m) / d).
  torch::Tensor offset;
};

/// The levels a weight is rounded onto, at unit scale (value = scale * level), for values of any shape that
/// the zero point broadcasts against (the weight's shape, the grouped view, a column):
///   integers: the integers [-z, 2^b-1-z] (z the zero point); code = level + z;
///   minifloats and power grids: the format's finite levels, saturating at +-max (an IEEE-like format's inf
///   is never a weight level); code = the format's encoding
///   (power grids: index + qmax, so that codes are unsigned).
/// Every method rounds through it: nearest() is round-to-nearest-even (RTN, FlexRound, GPTQ), below()/above()
/// the neighbouring pair AdaRound chooses from, passes() the straight-through mask of a rounding.
class WeightLevels {
 public:
  WeightLevels(Format format, torch::Tensor zero_point);
  const Format& format() const { return format_; }
  torch::Tensor nearest(const torch::Tensor& r) const;
  /// The level at or below r (integers: floor(r), not clamped: clamp() bounds the final choice).
  torch::Tensor below(const torch::Tensor& r) const;
  /// The next level above `level` (integers: level + 1; the largest level stays).
  torch::Tensor above(const torch::Tensor& level) const;
  torch::Tensor clamp(const torch::Tensor& level) const;
  /// 1 where round-to-nearest-even of r, before saturation, picks above(lower) over lower = below(r).
  torch::Tensor rounds_up(const torch::Tensor& r, const torch::Tensor& lower) const;
  /// 1 where q = nearest(r) was not saturated (the STE passes the gradient), 0 where it was.
  torch::Tensor passes(const torch::Tensor& r, const torch::Tensor& q) const;
  torch::Tensor to_codes(const torch::Tensor& level) const;   ///< uint8
  torch::Tensor from_codes(const torch::Tensor& codes) const; ///< fp32 levels
  /// Integers: -z and 2^b-1-z (undefined for other formats), for tests and exports.
  torch::Tensor lowest() const;
  torch::Tensor highest() const;

 private:
  double qmax() const { return static_cast<double>(format_.code_max()); }
  torch::Tensor saturated(const torch::Tensor& r) const;
  Format format_;
  torch::Tensor z_;  // integers only
};

/// The levels of a weight of `shape` (zero points broadcast to the weight).
WeightLevels weight_levels(const WeightQuantSpec& spec, const QParams& qp, at::IntArrayRef shape);
/// The levels in the grouped view (zero points in the parameter shape).
WeightLevels grouped_levels(const WeightQuantSpec& spec, const QParams& qp);

/// [Cout, ...] -> [Cout, G, g] (zero-padded) for the spec's granularity.
torch::Tensor to_grouped(const torch::Tensor& w, const WeightQuantSpec& spec);
/// Inverse of to_grouped: drops the padding and restores `shape`.
torch::Tensor from_grouped(const torch::Tensor& wg, at::IntArrayRef shape);

/// Initial grid for W (any shape [Cout, ...]); never produces a zero or non-finite scale.
QParams init_qparams(const torch::Tensor& w, const WeightQuantSpec& spec);

/// ConfigError naming the format when `spec` is not a weight grid flexquant quantizes to (integers uint2..uint8;
/// minifloat / power grids of at most 8 bits, symmetric) or its group size is < 1. The one check of a weight grid:
/// Recipe::validate and init_qparams both call it.
void check_weight_spec(const WeightQuantSpec& spec);

/// Scales as the spec stores them (scale_dtype): unchanged; rounded to fp16 and kept >= 2^-24; or, for KQuant, per
/// super-block d = fp16(max scale / top) and each scale d * clamp(round(scale / d), 1, cap), where top is the
/// largest sub-scale (Q2_K 15, Q4_K/Q5_K 63, Q3_K 32, Q6_K 128) and cap is top for the largest group and, for the
/// signed Q3_K / Q6_K, top - 1 for the others (which may then take either orientation). A projection:
/// stored_scale(stored_scale(s)) == stored_scale(s).
torch::Tensor stored_scale(const torch::Tensor& scale, const WeightQuantSpec& spec);
/// KQuant grids: why `spec` (with rows of k weights) is none of the five k-quant grids, "" when it is one.
std::string kquant_mismatch(const WeightQuantSpec& spec, int64_t k = 0);

/// Round-to-nearest-even fake quantization of W with fixed qparams (returns W's shape).
torch::Tensor fake_quant_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp);

/// A hardened weight: codes plus the grid. dequantize() is what the model runs with.
struct QuantizedTensor {
  torch::Tensor codes;       ///< uint8 (bits <= 8), grouped view [Cout, G, g]
  QParams qparams;
  std::vector<int64_t> shape;  ///< original weight shape
  WeightQuantSpec spec;
  /// Further points added to this one (multipoint quantization, methods.md §6): each a per-channel symmetric
  /// QuantizedTensor of the same shape whose scale is 0 on the rows that do not use it. Empty for every
  /// single-grid method; exporters to single-grid formats refuse tensors that have terms.
  std::vector<QuantizedTensor> terms;
  torch::Tensor dequantize() const;  ///< fp32, original shape; scale * level(code), plus every term's
  /// Code bits stored per weight: bits, plus bits times the fraction of rows each term is used on (scale > 0).
  double code_bits_per_weight() const;
};

/// Codes of RTN with qparams, as a QuantizedTensor.
QuantizedTensor quantize_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp);

/// Shape of the grouped view of a [Cout, ...] weight: {Cout, G, g}; K = numel/Cout is the unpadded row length.
struct GroupLayout {
  int64_t cout = 0, k = 0, groups = 1, group = 0;
  /// Shape of scale / zero_point: [1,1,1], [Cout,1,1] or [Cout,G,1].
  std::vector<int64_t> param_shape(Granularity g) const;
};
GroupLayout group_layout(at::IntArrayRef shape, const WeightQuantSpec& spec);

/// Broadcast a grouped-view parameter (scale / zero point shape, see above) to a weight of `shape`
/// (= [Cout, ...], or its [Cout, K] flattening): element (o, k) gets p[o, k / g]. Exact (a copy).
torch::Tensor expand_to_weight(const torch::Tensor& p, at::IntArrayRef shape, const WeightQuantSpec& spec);
/// Adjoint of expand_to_weight: sums a weight-shaped tensor into the parameter shape `param_shape`.
torch::Tensor reduce_to_param(const torch::Tensor& full, at::IntArrayRef param_shape, const WeightQuantSpec& spec);

/// Throws NumericError if w holds NaN or inf: "<what> [shape] contains N NaN and M inf values ...". The engine
/// passes the layer name in `what`.
void check_weight_finite(const torch::Tensor& w, const std::string& what = "weight");

/// Mean |a - b|^p over all elements (p = 2.4 is the search criterion of init_qparams), in float64.
double lp_error(const torch::Tensor& a, const torch::Tensor& b, double p = 2.4);

}  // namespace flexquant
