// Number formats: a closed set of exact value grids (integers, minifloats, power grids), their names, and the
// encode / decode / quantize operations on fp32 torch tensors.
//
// Minifloats follow Aggarwal et al. (arXiv 2311.12359, methods.md §8.1) and OCP FP8; the reduced-significand
// fp32 "sbits" family follows Paxton et al. (methods.md §9.1); power grids follow NUPES/PowerQuant (§5).
//
// Name grammar (Format::parse / Format::name, round trip: parse(f.name()) == f):
//   int<b>            signed integer, b = 2..16, codes -2^(b-1) .. 2^(b-1)-1
//   int<b>_r          signed, restricted (symmetric) range -(2^(b-1)-1) .. 2^(b-1)-1
//   uint<b>           unsigned, 0 .. 2^b-1
//   fp<n>_e<E>m<M>[_ieee|_fn][_b<bias>][_nosub]
//                     minifloat, n = 1+E+M, E >= 1, M >= 0. Default: saturating with no special values,
//                     bias 2^(E-1)-1, subnormals on. _ieee: inf and NaN as in IEEE 754 (E >= 2; with M = 0 only inf);
//                     _fn: OCP "finite + NaN": only the all-ones code of each sign is NaN;
//                     _b<bias>: exponent bias (may be negative: _b-3); _nosub: no subnormals.
//                     _sat names the default explicitly; name() prints it where the bare name is a preset
//                     with special codes (fp8_e4m3_sat: E4M3 with max 480 and no NaN).
//   sbits<k>          fp32 with only k = 0..23 fraction bits kept (= fp<9+k>_e8m<k>_ieee)
//   pow<b>_a<x>       power grid: levels sign(q)*|q|^x, q = -(2^(b-1)-1) .. 2^(b-1)-1, b = 2..16, x > 0
//                     written in shortest round-trip decimal (pow4_a0.5, pow8_a2)
//   pow<b>_a<x>_full  power grid on int<b>'s whole index range q = -2^(b-1) .. 2^(b-1)-1 (2^b levels)
// Presets (name() prints these where the format equals one): int2..int16, uint2..uint16, fp8_e4m3 (OCP,
// max 448), fp8_e5m2 (IEEE-like), fp6_e3m2, fp6_e2m3, fp4_e2m1 (max 6), fp16, bf16, sbits0..sbits23.
//
// Codes (encode's int32 output):
//   integers: the integer q itself (zero point included), in [qmin, qmax];
//   minifloats: the bit pattern sign|exponent|mantissa as an unsigned n-bit number (sbits23: the fp32 bits,
//               stored in int32 so it may read negative);
//   power grids: the signed index q in [code_min, code_max].
//
// NaN / inf policy:
//   - quantize(NaN) = NaN in every format (quiet NaN with the input's sign), so fake quantization never
//     hides a NaN. encode(NaN) gives the NaN code where the format has one (_ieee: exponent all ones and
//     mantissa MSB set; _fn: all ones), else throws NumericError ("format has no NaN code").
//   - +-inf and finite values beyond the grid: saturating formats (integers, power grids, default and _fn
//     minifloats) clamp to +-max in every rounding mode. _ieee minifloats follow IEEE 754 overflow: rounding
//     is done as if the exponent were unbounded, and a result above max becomes inf, except that modes
//     rounding the magnitude toward zero (toward_zero; down for x > 0; up for x < 0) give +-max.
//   - Zero: integers and power grids have one zero code, so -0 quantizes to +0; minifloats keep -0.
//   - Without subnormals the grid below the smallest normal 2^(1-bias) is {0, 2^(1-bias)}: values there round
//     between those two like anywhere else. Codes with a zero exponent field and a non-zero mantissa are
//     never produced by encode and decode to +-0.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "flexquant/granularity.h"
#include "flexquant/rounding.h"

namespace flexquant {

/// Integer grid.
struct IntFormat {
  int bits = 8;             ///< code width, 2..16
  bool is_signed = true;    ///< signed two's-complement range or unsigned 0..2^bits-1
  bool restricted = false;  ///< signed only: drop -2^(bits-1) so the range is symmetric (int4_r: -7..7)
  bool operator==(const IntFormat& o) const {
    return bits == o.bits && is_signed == o.is_signed && restricted == o.restricted;
  }
};

/// Which minifloat codes are special.
enum class FloatSpecials {
  None,     ///< no inf, no NaN: every code is finite, max = (2 - 2^-M) * 2^(2^E - 1 - bias); saturating
  NanOnly,  ///< OCP "fn": only exponent-and-mantissa all ones is NaN (E4M3: max 448); saturating
  Ieee,     ///< IEEE 754: the all-ones exponent holds inf (mantissa 0) and NaN; overflow goes to inf
};

/// Minifloat ExMy: 1 sign bit, exp_bits exponent bits, man_bits mantissa (fraction) bits.
/// Range: exp_bits 1..8, man_bits 0..23, 1+E+M <= 32, and every level must be an fp32 number
/// (largest exponent <= 127, smallest subnormal >= 2^-149); Ieee needs exp_bits >= 2 (with man_bits = 0
/// the top exponent holds only inf and there is no NaN code).
struct FloatFormat {
  int exp_bits = 4;
  int man_bits = 3;
  int bias = 7;  ///< exponent bias; conventional default 2^(exp_bits-1) - 1 (see default_bias())
  bool subnormals = true;
  FloatSpecials specials = FloatSpecials::None;
  static int default_bias(int exp_bits) { return (1 << (exp_bits - 1)) - 1; }
  bool operator==(const FloatFormat& o) const {
    return exp_bits == o.exp_bits && man_bits == o.man_bits && bias == o.bias && subnormals == o.subnormals &&
           specials == o.specials;
  }
};

/// Power (NUPES-style) grid on unit scale: levels sign(q) * |q|^exponent, q = -qmax..qmax,
/// qmax = 2^(bits-1) - 1, each level rounded once to fp32. exponent < 1 puts more levels near the extremes,
/// exponent > 1 more near zero (PowerQuant's Q_a corresponds to exponent = 1/a).
struct PowFormat {
  int bits = 4;           ///< 2..16
  double exponent = 1.0;  ///< > 0 and finite
  /// Index range of int<b>, -2^(bits-1) .. qmax: one more (negative) level, so a b-bit code has 2^b levels as
  /// the integer grid it replaces (at 2 bits the symmetric range is only {-1, 0, 1}, where the exponent is moot).
  bool full = false;
  bool operator==(const PowFormat& o) const {
    return bits == o.bits && exponent == o.exponent && full == o.full;
  }
};

/// A number format: one of the three kinds above, validated on construction (ConfigError when invalid).
class Format {
 public:
  using Kind = std::variant<IntFormat, FloatFormat, PowFormat>;

  Format(IntFormat f);    // NOLINT(google-explicit-constructor): a kind converts to its Format
  Format(FloatFormat f);  // NOLINT
  Format(PowFormat f);    // NOLINT

  /// Parses a preset or grammar name (see the top of this header). Throws ConfigError listing the presets
  /// and the grammar for unknown or invalid names.
  static Format parse(const std::string& name);
  /// Canonical name: the preset name where the format equals a preset, else the grammar name.
  std::string name() const;
  /// Human-readable layout: "s1 e4 m3, bias 7, subnormals, NaN only (OCP fn)", "int4 signed [-8, 7]".
  std::string layout() const;

  const Kind& kind() const { return kind_; }
  bool is_int() const { return std::holds_alternative<IntFormat>(kind_); }
  bool is_float() const { return std::holds_alternative<FloatFormat>(kind_); }
  bool is_pow() const { return std::holds_alternative<PowFormat>(kind_); }
  const IntFormat& as_int() const { return std::get<IntFormat>(kind_); }
  const FloatFormat& as_float() const { return std::get<FloatFormat>(kind_); }
  const PowFormat& as_pow() const { return std::get<PowFormat>(kind_); }

  /// Code width in bits.
  int bits() const;
  /// Smallest and largest code (integers: qmin/qmax; power grids: the signed index range; minifloats: 0 and
  /// 2^bits-1).
  int64_t code_min() const;
  int64_t code_max() const;
  /// Largest finite level on unit scale (what saturation clamps to).
  double max_value() const;
  /// Most negative finite level: -max_value(), except integers (code_min) and _full power grids.
  double min_value() const;
  /// Minifloats: 2^(1-bias); integers and power grids: the smallest positive level.
  double min_normal() const;
  /// Smallest positive level (a subnormal if the format has them).
  double min_subnormal() const;
  /// Number of distinct finite levels (+0 and -0 count once).
  int64_t num_levels() const;
  /// Whether encode(NaN) has a code to give.
  bool has_nan() const;
  /// Whether inf is a level (Ieee minifloats only).
  bool has_inf() const;

  bool operator==(const Format& o) const { return kind_ == o.kind_; }
  bool operator!=(const Format& o) const { return !(*this == o); }

  /// Preset names with a one-line description, in display order.
  static const std::vector<std::pair<std::string, std::string>>& presets();

 private:
  Kind kind_;
};

/// Every finite level of f on unit scale, ascending, +0 once (-0 is not listed). Throws ConfigError for
/// formats with more than 2^20 levels (sbits13 and up).
std::vector<double> levels(const Format& f);

// ---- Tensor operations. x: fp32, any shape (made contiguous). Stochastic rounding draws from
// random_bits(seed, i) with i the flat row-major index of the element, so results never depend on threads.

/// Rounds x onto the unit-scale grid of f (scale 1, zero point 0) and returns fp32 of x's shape.
torch::Tensor quantize(const torch::Tensor& x, const Format& f, RoundingMode mode = RoundingMode::NearestEven,
                       uint64_t seed = 0);
/// Rounds x onto the scaled grid: value = (code - zero_point) * scale. Integer formats take a zero point;
/// minifloats and power grids only scale (their zero point must be absent or 0).
torch::Tensor quantize(const torch::Tensor& x, const Format& f, const ScaleParams& qp,
                       RoundingMode mode = RoundingMode::NearestEven, uint64_t seed = 0);

/// quantize() into a preallocated fp32 tensor `out` of x's shape (contiguous), e.g. to reuse a buffer in a
/// loop: allocating a fresh 64 MiB result costs as much as the rounding itself.
void quantize_out(torch::Tensor& out, const torch::Tensor& x, const Format& f, const ScaleParams& qp,
                  RoundingMode mode = RoundingMode::NearestEven, uint64_t seed = 0);

/// Codes (int32, x's shape) of the levels quantize() would return.
torch::Tensor encode(const torch::Tensor& x, const Format& f, RoundingMode mode = RoundingMode::NearestEven,
                     uint64_t seed = 0);
torch::Tensor encode(const torch::Tensor& x, const Format& f, const ScaleParams& qp,
                     RoundingMode mode = RoundingMode::NearestEven, uint64_t seed = 0);

/// Values (fp32) of integer codes (any integer dtype). Codes outside [code_min, code_max] throw NumericError.
torch::Tensor decode(const torch::Tensor& codes, const Format& f);
torch::Tensor decode(const torch::Tensor& codes, const Format& f, const ScaleParams& qp);

}  // namespace flexquant
