// Shared helpers for the format tests: the format sweeps and bit-exact float comparison.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

#include "flexquant/error.h"
#include "flexquant/format.h"

namespace flexquant::testing {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
/// Bitwise equal, except that any two NaNs match (NaN payloads are unspecified, see format.h).
inline bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b); }

inline std::string hex(float f) {
  std::ostringstream os;
  os << std::hexfloat << f << " (0x" << std::hex << std::setw(8) << std::setfill('0') << bits_of(f) << ")";
  return os.str();
}

inline const std::vector<RoundingMode>& all_modes() {
  static const std::vector<RoundingMode> m = {RoundingMode::NearestEven, RoundingMode::NearestAway,
                                              RoundingMode::TowardZero,  RoundingMode::Up,
                                              RoundingMode::Down,        RoundingMode::Stochastic};
  return m;
}

/// Every format of at most 16 bits the exhaustive tests walk: the presets that fit, int2..int16 signed,
/// restricted and unsigned, every valid ExMy with 1+E+M <= 8 in all special-value and subnormal variants,
/// the 16-bit minifloats E1M14..E8M7, and power grids.
inline std::vector<Format> small_formats() {
  std::vector<Format> out;
  auto add = [&](const Format& f) {
    for (const auto& g : out)
      if (g == f) return;
    out.push_back(f);
  };
  for (const auto& p : Format::presets()) {
    Format f = Format::parse(p.first);
    if (f.bits() <= 16) add(f);
  }
  for (int b = 2; b <= 16; ++b) {
    add(IntFormat{b, true, false});
    add(IntFormat{b, true, true});
    add(IntFormat{b, false, false});
  }
  for (int e = 1; e <= 7; ++e)
    for (int m = 0; e + m + 1 <= 8; ++m)
      for (auto sp : {FloatSpecials::None, FloatSpecials::NanOnly, FloatSpecials::Ieee})
        for (bool sub : {true, false}) {
          if (sp == FloatSpecials::Ieee && e < 2) continue;
          if (sp == FloatSpecials::NanOnly && e == 1 && m == 0) continue;
          add(FloatFormat{e, m, FloatFormat::default_bias(e), sub, sp});
        }
  add(FloatFormat{4, 3, 10, true, FloatSpecials::NanOnly});  // custom bias
  add(FloatFormat{3, 2, -2, true, FloatSpecials::None});      // negative bias
  add(FloatFormat{8, 4, 135, true, FloatSpecials::None});     // normals inside fp32's subnormal range
  add(FloatFormat{8, 4, 135, false, FloatSpecials::Ieee});
  for (int e = 1; e <= 8; ++e)  // e = 8 without special codes reaches 2^128 with the default bias: use 128
    add(FloatFormat{e, 15 - e, e == 8 ? 128 : FloatFormat::default_bias(e), true, FloatSpecials::None});
  for (int b = 2; b <= 8; ++b)
    for (double a : {0.5, 1.0, 1.5, 2.0, 3.0})
      for (bool full : {false, true}) add(PowFormat{b, a, full});
  add(PowFormat{12, 2.0});
  add(PowFormat{16, 0.5});
  add(PowFormat{16, 0.5, true});
  return out;
}

}  // namespace flexquant::testing
