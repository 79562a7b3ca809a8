// Internal: exact element-wise rounding on fp32 bit patterns, shared by every format's fast path.
//
// A positive finite fp32 value with bit pattern a is rounded to a multiple of 2^se by integer operations on
// its bits (the classic fp32 -> fp16 technique): the low d = se - ef + 23 bits of the pattern are the
// remainder below the step when d <= 23, and carries run into the exponent field correctly because positive
// float patterns are ordered like the values. Everything is exact: no intermediate is rounded.
#pragma once
#include <cstdint>
#include <cstring>

#include "flexquant/rounding.h"

namespace flexquant::detail {

// The element functions sit inside per-element loops: force inlining so each mode's loop is specialised.
#define FQ_INLINE inline __attribute__((always_inline))

inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Bits of 2^e for e in [-149, 127].
inline uint32_t pow2_bits(int e) { return e >= -126 ? uint32_t(e + 127) << 23 : 1u << (e + 149); }

inline uint64_t splitmix_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
/// Per-seed key of random_bits(); random_bits(seed, i) == splitmix_at(splitmix_key(seed), i).
inline uint64_t splitmix_key(uint64_t seed) { return splitmix_mix(seed ^ 0x5851F42D4C957F2DULL); }
inline uint64_t splitmix_at(uint64_t key, uint64_t i) { return splitmix_mix(key + (i + 1) * 0x9E3779B97F4A7C15ULL); }

/// Rounding of a magnitude once the sign is known.
enum class MagMode { NearestEven, NearestAway, Trunc, Away, Stochastic };

FQ_INLINE MagMode mag_mode(RoundingMode m, bool negative) {
  switch (m) {
    case RoundingMode::NearestEven: return MagMode::NearestEven;
    case RoundingMode::NearestAway: return MagMode::NearestAway;
    case RoundingMode::TowardZero: return MagMode::Trunc;
    case RoundingMode::Up: return negative ? MagMode::Trunc : MagMode::Away;
    case RoundingMode::Down: return negative ? MagMode::Away : MagMode::Trunc;
    case RoundingMode::Stochastic: return MagMode::Stochastic;
  }
  return MagMode::NearestEven;
}

/// Stochastic decision: true iff U < R / 2^d with U = (r >> 11) * 2^-53 (random_uniform()), exactly.
/// Needs R < 2^24, d >= 1.
FQ_INLINE bool sr_up(uint32_t R, int d, uint64_t r) {
  if (d <= 53) return (r >> (64 - d)) < R;
  const int k = d - 53;  // U < R / 2^k  <=>  (r >> 11) < ceil(R / 2^k)
  const uint64_t thr = k >= 24 ? (R != 0) : (uint64_t(R) + (uint64_t(1) << k) - 1) >> k;
  return (r >> 11) < thr;
}

/// Rounds the positive finite pattern a to a multiple of 2^se (se in [-149, 127]), in mode mm.
/// r: the element's random bits (Stochastic only). Returns the bit pattern of the result (may be 2^128's
/// pattern 0x7f800000 only if the caller lets a reach the top binade of fp32 with se = 127 - 23; callers
/// clamp before that).
FQ_INLINE uint32_t round_to_step(uint32_t a, int se, MagMode mm, uint64_t r) {
  const uint32_t field = a >> 23;
  const int ef = int(field ? field : 1) - 127;
  const int d = se - ef + 23;
  if (d <= 0) return a;
  if (d <= 23) {
    const uint32_t mask = (1u << d) - 1, R = a & mask, half = 1u << (d - 1), base = a & ~mask;
    bool inc = false;
    switch (mm) {
      // The kept integer is the significand q = a / 2^d; at d = 23 its last bit is the implicit bit (for
      // m = 0 formats q = 1, odd, so ties between 2^k and 2^(k+1) go up, as nearbyint(x / step) does).
      case MagMode::NearestEven: {
        const bool odd = d == 23 ? field != 0 : ((a >> d) & 1u) != 0;
        inc = R > half || (R == half && odd);
        break;
      }
      case MagMode::NearestAway: inc = R >= half; break;
      case MagMode::Trunc: inc = false; break;
      case MagMode::Away: inc = R != 0; break;
      case MagMode::Stochastic: inc = sr_up(R, d, r); break;
    }
    return base + (inc ? (1u << d) : 0u);
  }
  // a < 2^se: the neighbours are 0 and 2^se, and the midpoint 2^(se-1) >= 2^-126 is a normal float.
  const uint32_t half = pow2_bits(se - 1);
  bool inc = false;
  switch (mm) {
    case MagMode::NearestEven: inc = a > half; break;  // the tie goes to 0, the even code
    case MagMode::NearestAway: inc = a >= half; break;
    case MagMode::Trunc: inc = false; break;
    case MagMode::Away: inc = a != 0; break;
    case MagMode::Stochastic: inc = sr_up((a & 0x7fffffu) | (field ? 0x800000u : 0u), d, r); break;
  }
  return inc ? pow2_bits(se) : 0u;
}

/// floor(log2(v)) of the positive finite pattern a != 0, fp32 subnormals included.
FQ_INLINE int true_exponent(uint32_t a) {
  const uint32_t field = a >> 23;
  return field ? int(field) - 127 : (31 - __builtin_clz(a)) - 149;
}

/// What the minifloat kernel needs from a FloatFormat, precomputed.
struct FloatParams {
  int man_bits = 0;
  int emin = 0;         // 1 - bias: exponent of the smallest normal binade
  int emax = 0;         // exponent of the largest binade holding a finite level
  bool subnormals = true;
  bool ieee = false;    // overflow to inf (else saturate)
  uint32_t max_bits = 0;  // fp32 pattern of the largest finite level
};

/// Rounds x onto the minifloat grid (unit scale). NaN -> quiet NaN with x's sign; see format.h for inf and
/// overflow.
FQ_INLINE float round_float_grid(float x, const FloatParams& p, RoundingMode mode, uint64_t r) {
  const uint32_t b = f2u(x), sign = b & 0x80000000u, a = b & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a > 0x7f800000u) return u2f(sign | 0x7fc00000u);
    return p.ieee ? x : u2f(sign | p.max_bits);
  }
  if (a == 0) return x;
  const MagMode mm = mag_mode(mode, sign != 0);
  const int ef = true_exponent(a);
  uint32_t res;
  if (ef > p.emax) {
    res = (mm == MagMode::Trunc || !p.ieee) ? p.max_bits : 0x7f800000u;
  } else {
    const int se = ef >= p.emin ? ef - p.man_bits : (p.subnormals ? p.emin - p.man_bits : p.emin);
    res = round_to_step(a, se, mm, r);
    if (res > p.max_bits) res = (p.ieee && mm != MagMode::Trunc) ? 0x7f800000u : p.max_bits;
  }
  return u2f(sign | res);
}

/// Rounds t (already clamped to [lo, hi], integers, |t| <= 2^17) to an integer; zero comes out as +0.
FQ_INLINE float round_int_grid(float t, RoundingMode mode, uint64_t r) {
  const uint32_t b = f2u(t), sign = b & 0x80000000u, a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return u2f(sign | 0x7fc00000u);
  const uint32_t res = round_to_step(a, 0, mag_mode(mode, sign != 0), r);
  return res ? u2f(sign | res) : 0.0f;
}

}  // namespace flexquant::detail
