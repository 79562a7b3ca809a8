// Slow, obvious scalar reference for the number formats, written apart from src/ (tests only).
//
// Everything here is the textbook formula in double precision, one element at a time:
//   minifloat value  (-1)^s * 2^(E - bias) * (1 + M / 2^m), subnormal (-1)^s * 2^(1 - bias) * M / 2^m
//   minifloat round  e = max(floor(log2|x|), 1 - bias), step = 2^(e - m), q = x / step rounded per mode
//                    (Aggarwal et al., methods.md §8.1), then overflow: saturate, or inf for IEEE-like
//   integer round    q = clamp(round(x / s) + z, qmin, qmax), value (q - z) * s
//   power grid       search the sorted level list; the midpoint of two levels decides nearest
// Stochastic rounding draws U = (splitmix64 output >> 11) * 2^-53 as documented in rounding.h and rounds
// away from zero iff U < fractional distance.
#pragma once
#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "flexquant/format.h"

namespace flexquant::ref {

// ---- random stream (splitmix64, as documented for random_bits)
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
inline double uniform(uint64_t seed, uint64_t index) {
  uint64_t state = mix64(seed ^ 0x5851F42D4C957F2DULL);
  state += (index + 1) * 0x9E3779B97F4A7C15ULL;
  return double(mix64(state) >> 11) / 9007199254740992.0;  // 2^53
}

// ---- minifloat fields
inline int top_finite_exponent(const FloatFormat& f) {
  int top_field = (1 << f.exp_bits) - 1;
  if (f.specials == FloatSpecials::Ieee || (f.specials == FloatSpecials::NanOnly && f.man_bits == 0)) top_field--;
  return top_field - f.bias;
}
inline double float_max(const FloatFormat& f) {
  const double m = std::pow(2.0, f.man_bits);
  double mant = (2.0 * m - 1.0) / m;  // 1.11..1
  if (f.specials == FloatSpecials::NanOnly && f.man_bits > 0) mant -= 1.0 / m;
  if (f.specials == FloatSpecials::NanOnly && f.man_bits == 0) mant = 1.0;
  return mant * std::pow(2.0, top_finite_exponent(f));
}

/// Textbook decode of a minifloat bit pattern.
inline double float_decode(const FloatFormat& f, uint64_t code) {
  const uint64_t M = code % (uint64_t(1) << f.man_bits);
  const uint64_t E = (code >> f.man_bits) % (uint64_t(1) << f.exp_bits);
  const int s = int((code >> (f.man_bits + f.exp_bits)) & 1);
  const double sign = s ? -1.0 : 1.0;
  const uint64_t all_ones_e = (uint64_t(1) << f.exp_bits) - 1, all_ones_m = (uint64_t(1) << f.man_bits) - 1;
  if (f.specials == FloatSpecials::Ieee && E == all_ones_e)
    return M == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  if (f.specials == FloatSpecials::NanOnly && E == all_ones_e && M == all_ones_m)
    return std::numeric_limits<double>::quiet_NaN();
  const double frac = double(M) / std::pow(2.0, f.man_bits);
  if (E == 0) return f.subnormals ? sign * frac * std::pow(2.0, 1 - f.bias) : sign * 0.0;
  return sign * (1.0 + frac) * std::pow(2.0, double(E) - f.bias);
}

/// Rounds the double q to an integer in mode (sign-aware), U for stochastic.
inline double round_integer(double q, RoundingMode mode, double U) {
  switch (mode) {
    case RoundingMode::NearestEven: {
      std::fesetround(FE_TONEAREST);
      return std::nearbyint(q);
    }
    case RoundingMode::NearestAway: return std::round(q);
    case RoundingMode::TowardZero: return std::trunc(q);
    case RoundingMode::Up: return std::ceil(q);
    case RoundingMode::Down: return std::floor(q);
    case RoundingMode::Stochastic: {
      const double a = std::fabs(q), lo = std::floor(a);
      const double r = (U < a - lo) ? lo + 1 : lo;
      return q < 0 ? -r : r;
    }
  }
  return q;
}

inline bool magnitude_toward_zero(RoundingMode mode, bool negative) {
  return mode == RoundingMode::TowardZero || (mode == RoundingMode::Up && negative) ||
         (mode == RoundingMode::Down && !negative);
}

/// Minifloat rounding of x (unit scale). NaN in -> NaN out.
inline double float_round(const FloatFormat& f, double x, RoundingMode mode, double U) {
  if (std::isnan(x)) return x;
  const bool ieee = f.specials == FloatSpecials::Ieee;
  const double mx = float_max(f);
  const double inf = std::numeric_limits<double>::infinity();
  const bool neg = std::signbit(x);
  auto overflow = [&] {
    const double v = (ieee && !magnitude_toward_zero(mode, neg)) ? inf : mx;
    return neg ? -v : v;
  };
  if (std::isinf(x)) return ieee ? x : (neg ? -mx : mx);
  if (x == 0) return x;
  const int emin = 1 - f.bias, emax = top_finite_exponent(f);
  int e = int(std::floor(std::log2(std::fabs(x))));
  // log2 of a double can be off by one next to powers of two: fix e so that 2^e <= |x| < 2^(e+1).
  while (std::ldexp(1.0, e) > std::fabs(x)) --e;
  while (std::ldexp(1.0, e + 1) <= std::fabs(x)) ++e;
  if (e > emax) return overflow();
  double step;
  if (e >= emin) step = std::ldexp(1.0, e - f.man_bits);
  else step = f.subnormals ? std::ldexp(1.0, emin - f.man_bits) : std::ldexp(1.0, emin);
  double r = round_integer(x / step, mode, U) * step;
  if (std::fabs(r) > mx) return overflow();
  return std::copysign(r, x);
}

// ---- integers (unit scale, zero point z): returns the code q
inline int64_t int_qmin(const IntFormat& f) {
  return f.is_signed ? -(int64_t(1) << (f.bits - 1)) + (f.restricted ? 1 : 0) : 0;
}
inline int64_t int_qmax(const IntFormat& f) {
  return f.is_signed ? (int64_t(1) << (f.bits - 1)) - 1 : (int64_t(1) << f.bits) - 1;
}
inline int64_t int_code(const IntFormat& f, double t, int64_t z, RoundingMode mode, double U) {
  if (std::isinf(t)) return t > 0 ? int_qmax(f) : int_qmin(f);
  double q = round_integer(t, mode, U) + double(z);
  q = std::max(q, double(int_qmin(f)));
  q = std::min(q, double(int_qmax(f)));
  return int64_t(q);
}

// ---- power grids
/// |q|^x for q = 0 .. 2^(b-1)-1, and 2^(b-1) too for _full grids (their one extra negative level).
inline std::vector<float> pow_magnitudes(const PowFormat& f) {
  std::vector<float> L;
  const int last = (1 << (f.bits - 1)) - (f.full ? 0 : 1);
  for (int q = 0; q <= last; ++q) L.push_back(float(std::pow(double(q), f.exponent)));
  return L;
}
/// Signed index of the level t rounds to. full: the negative side has one more level than the positive.
inline int pow_code(const std::vector<float>& L, bool full, double t, RoundingMode mode, double U) {
  const bool neg = std::signbit(t);
  const double a = std::fabs(t);
  const int qmax = int(L.size()) - 1 - (full && !neg ? 1 : 0);
  int j;
  if (a >= L[qmax]) {
    j = qmax;
  } else {
    int g = int(std::upper_bound(L.begin(), L.end(), float(a)) - L.begin()) - 1;  // L[g] <= a < L[g+1]
    while (double(L[g + 1]) <= a) ++g;
    while (double(L[g]) > a) --g;
    if (a == L[g]) {
      j = g;
    } else {
      const double lo = L[g], hi = L[g + 1], mid = (lo + hi) / 2;
      const bool away_dir = (mode == RoundingMode::Up && !neg) || (mode == RoundingMode::Down && neg);
      if (mode == RoundingMode::NearestEven) j = a < mid ? g : a > mid ? g + 1 : (g % 2 == 0 ? g : g + 1);
      else if (mode == RoundingMode::NearestAway) j = a < mid ? g : g + 1;
      else if (mode == RoundingMode::Stochastic) j = U < (a - lo) / (hi - lo) ? g + 1 : g;
      else j = away_dir ? g + 1 : g;
    }
  }
  return neg ? -j : j;
}

// ---- the reference quantize of one element with scale s and zero point z.
// t = x / s is the fp32 division (it is part of the quantizer's definition).
struct Quantizer {
  Format f;
  std::vector<float> L;  // power grids only
  explicit Quantizer(const Format& fmt) : f(fmt) {
    if (f.is_pow()) L = pow_magnitudes(f.as_pow());
  }
  float operator()(float x, float s, int32_t z, RoundingMode mode, double U) const {
    const float t = x / s;
    if (std::isnan(t)) return t;
    if (f.is_int()) return float(int_code(f.as_int(), t, z, mode, U) - z) * s;
    if (f.is_float()) return float(float_round(f.as_float(), t, mode, U)) * s;
    const int q = pow_code(L, f.as_pow().full, t, mode, U);
    return q == 0 ? 0.0f : (q < 0 ? -L[-q] : L[q]) * s;
  }
  /// Value of a code on unit scale.
  double decode(int64_t c) const {
    if (f.is_int()) return double(c);
    if (f.is_float()) return float_decode(f.as_float(), uint64_t(c));
    return c == 0 ? 0.0 : (c < 0 ? -double(L[-c]) : double(L[c]));
  }
};

}  // namespace flexquant::ref
