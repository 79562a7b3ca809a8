// Internal helpers shared by the format sources (not installed, not for tests).
#pragma once
#include <cmath>
#include <vector>

#include "../rounding/round_kernels.h"
#include "flexquant/format.h"

namespace flexquant::detail {

/// Kernel parameters of a minifloat (emin, emax, max pattern ...).
FloatParams float_params(const FloatFormat& f);

/// Power-grid levels |q|^a for q = 0..qmax, each rounded once to fp32.
std::vector<float> pow_levels(const PowFormat& f);

/// Value of a minifloat code (bit pattern, masked to the format's width); NaN for NaN codes, +-inf for inf.
inline float decode_float_code(const FloatFormat& f, uint32_t code) {
  const int m = f.man_bits, e = f.exp_bits;
  const uint32_t mant = code & ((1u << m) - 1);
  const uint32_t field = (code >> m) & ((1u << e) - 1);
  const bool neg = (code >> (m + e)) & 1u;
  const uint32_t top = (1u << e) - 1;
  float v;
  if (field == top && f.specials == FloatSpecials::Ieee) {
    v = mant == 0 ? INFINITY : NAN;
  } else if (field == top && f.specials == FloatSpecials::NanOnly && mant == (1u << m) - 1) {
    v = NAN;
  } else if (field == 0) {
    v = f.subnormals ? std::ldexp(float(mant), 1 - f.bias - m) : 0.0f;
  } else {
    v = std::ldexp(float((1u << m) | mant), int(field) - f.bias - m);
  }
  return neg ? -v : v;
}

}  // namespace flexquant::detail
