// Format: the closed set of number grids (integer, minifloat, power), their validation, names and properties.
// Minifloat fields follow Aggarwal et al. (arXiv 2311.12359, methods.md §8.1): max_float = (2 - 2^-M) *
// 2^(2^E - 1 - B) without special codes, one mantissa step lower with OCP's NaN-only code, and IEEE 754
// (top exponent reserved) for _ieee. Power grids are NUPES/PowerQuant's sign(q)|q|^a (methods.md §5).
#include "flexquant/format.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "flexquant/error.h"
#include "format_internal.h"

namespace flexquant {

namespace {

constexpr const char* kGrammar =
    "int<b>, int<b>_r, uint<b> (b = 2..16), fp<n>_e<E>m<M>[_ieee|_fn|_sat][_b<bias>][_nosub] (n = 1+E+M), "
    "sbits<k> (k = 0..23), pow<b>_a<x> (x > 0)";

std::string preset_list() {
  std::string s;
  for (const auto& p : Format::presets()) s += (s.empty() ? "" : ", ") + p.first;
  return s;
}

[[noreturn]] void bad_name(const std::string& name, const std::string& why) {
  throw ConfigError(detail::concat("format \"", name, "\" is not valid", why.empty() ? "" : ": ", why,
                                   "; presets are ", preset_list(), "; grammar: ", kGrammar,
                                   "; hint: run \"flexquant formats\""));
}

// Parses a decimal integer that fills s entirely; false otherwise.
bool parse_int(const std::string& s, int& out) {
  if (s.empty() || s.size() > 6) return false;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (*end != '\0' || !(std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-')) return false;
  out = static_cast<int>(v);
  return true;
}

std::string shortest_double(double x) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

const std::vector<std::pair<std::string, Format>>& preset_table() {
  static const std::vector<std::pair<std::string, Format>> table = [] {
    std::vector<std::pair<std::string, Format>> t;
    auto fp = [](int e, int m, int bias, FloatSpecials sp) { return Format(FloatFormat{e, m, bias, true, sp}); };
    for (int b : {2, 3, 4, 8, 16}) t.emplace_back("int" + std::to_string(b), Format(IntFormat{b, true, false}));
    for (int b : {4, 8}) t.emplace_back("int" + std::to_string(b) + "_r", Format(IntFormat{b, true, true}));
    for (int b : {4, 8}) t.emplace_back("uint" + std::to_string(b), Format(IntFormat{b, false, false}));
    t.emplace_back("fp8_e4m3", fp(4, 3, 7, FloatSpecials::NanOnly));
    t.emplace_back("fp8_e5m2", fp(5, 2, 15, FloatSpecials::Ieee));
    t.emplace_back("fp6_e3m2", fp(3, 2, 3, FloatSpecials::None));
    t.emplace_back("fp6_e2m3", fp(2, 3, 1, FloatSpecials::None));
    t.emplace_back("fp4_e2m1", fp(2, 1, 1, FloatSpecials::None));
    t.emplace_back("fp16", fp(5, 10, 15, FloatSpecials::Ieee));
    t.emplace_back("bf16", fp(8, 7, 127, FloatSpecials::Ieee));
    for (int k = 0; k <= 23; ++k) t.emplace_back("sbits" + std::to_string(k), fp(8, k, 127, FloatSpecials::Ieee));
    t.emplace_back("pow4_a0.5", Format(PowFormat{4, 0.5}));
    t.emplace_back("pow4_a2", Format(PowFormat{4, 2.0}));
    return t;
  }();
  return table;
}

void validate(const IntFormat& f) {
  FQ_CHECK(f.bits >= 2 && f.bits <= 16, ConfigError, "integer format bit width ", f.bits,
           " is not valid: allowed 2..16");
  FQ_CHECK(f.is_signed || !f.restricted, ConfigError,
           "restricted range is only defined for signed integers (uint", f.bits, "_r); hint: use int", f.bits,
           "_r or uint", f.bits);
}

void validate(const FloatFormat& f) {
  FQ_CHECK(f.exp_bits >= 1 && f.exp_bits <= 8, ConfigError, "minifloat exponent bits ", f.exp_bits,
           " are not valid: allowed 1..8 (values must stay fp32 numbers)");
  FQ_CHECK(f.man_bits >= 0 && f.man_bits <= 23, ConfigError, "minifloat mantissa bits ", f.man_bits,
           " are not valid: allowed 0..23");
  if (f.specials == FloatSpecials::Ieee)
    FQ_CHECK(f.exp_bits >= 2, ConfigError, "IEEE-like minifloat e", f.exp_bits, "m", f.man_bits,
             " is not valid: _ieee needs E >= 2 (the top exponent is reserved, one more must be finite)");
  if (f.specials == FloatSpecials::NanOnly && f.man_bits == 0)
    FQ_CHECK(f.exp_bits >= 2, ConfigError, "minifloat e1m0_fn has no finite non-zero level");
  const auto p = detail::float_params(f);
  FQ_CHECK(p.emax <= 127, ConfigError, "minifloat e", f.exp_bits, "m", f.man_bits, " with bias ", f.bias,
           " is not valid: largest exponent ", p.emax, " exceeds fp32's 127; hint: raise the bias");
  const int lowest = f.subnormals ? p.emin - f.man_bits : p.emin;
  FQ_CHECK(lowest >= -149 && p.emin >= -148, ConfigError, "minifloat e", f.exp_bits, "m", f.man_bits,
           " with bias ", f.bias, " is not valid: smallest level 2^", lowest,
           " is below fp32's 2^-149; hint: lower the bias");
}

void validate(const PowFormat& f) {
  FQ_CHECK(f.bits >= 2 && f.bits <= 16, ConfigError, "power grid bit width ", f.bits,
           " is not valid: allowed 2..16");
  FQ_CHECK(std::isfinite(f.exponent) && f.exponent > 0, ConfigError, "power grid exponent ", f.exponent,
           " is not valid: allowed finite > 0");
  const auto lv = detail::pow_levels(f);
  FQ_CHECK(std::isfinite(lv.back()), ConfigError, "power grid pow", f.bits, "_a", f.exponent,
           " is not valid: its largest level overflows fp32; hint: use a smaller exponent");
  for (size_t q = 1; q < lv.size(); ++q)
    FQ_CHECK(lv[q] > lv[q - 1], ConfigError, "power grid pow", f.bits, "_a", f.exponent,
             " is not valid: levels ", q - 1, " and ", q, " are the same fp32 number; hint: use a larger "
             "exponent or fewer bits");
}

}  // namespace

namespace detail {

FloatParams float_params(const FloatFormat& f) {
  FloatParams p;
  p.man_bits = f.man_bits;
  p.emin = 1 - f.bias;
  p.subnormals = f.subnormals;
  p.ieee = f.specials == FloatSpecials::Ieee;
  const int top_field = (1 << f.exp_bits) - 1;
  // The largest binade holding a finite level, and its largest mantissa.
  int top = top_field, top_mant = (1 << f.man_bits) - 1;
  if (f.specials == FloatSpecials::Ieee) {
    top = top_field - 1;
  } else if (f.specials == FloatSpecials::NanOnly) {
    if (f.man_bits == 0) top = top_field - 1;
    else top_mant -= 1;
  }
  p.emax = top - f.bias;
  if (p.emax <= 127 && p.emax >= -149)
    p.max_bits = f2u(std::ldexp(float((1 << f.man_bits) + top_mant), p.emax - f.man_bits));
  return p;
}

std::vector<float> pow_levels(const PowFormat& f) {
  const int qmax = (1 << (f.bits - 1)) - (f.full ? 0 : 1);
  std::vector<float> lv(qmax + 1);
  for (int q = 0; q <= qmax; ++q) lv[q] = static_cast<float>(std::pow(static_cast<double>(q), f.exponent));
  return lv;
}

}  // namespace detail

Format::Format(IntFormat f) : kind_(f) { validate(f); }
Format::Format(FloatFormat f) : kind_(f) { validate(f); }
Format::Format(PowFormat f) : kind_(f) { validate(f); }

const std::vector<std::pair<std::string, std::string>>& Format::presets() {
  static const std::vector<std::pair<std::string, std::string>> list = [] {
    std::vector<std::pair<std::string, std::string>> l;
    for (const auto& [name, f] : preset_table()) {
      std::string desc = f.layout();
      if (name == "fp8_e4m3") desc += " - OCP FP8 E4M3";
      if (name == "fp8_e5m2") desc += " - OCP FP8 E5M2";
      if (name == "fp16") desc += " - IEEE binary16";
      if (name == "bf16") desc += " - bfloat16";
      if (name.rfind("sbits", 0) == 0) desc += " - fp32 with " + name.substr(5) + " fraction bits";
      l.emplace_back(name, desc);
    }
    return l;
  }();
  return list;
}

Format Format::parse(const std::string& name) {
  for (const auto& [n, f] : preset_table())
    if (n == name) return f;
  try {
    if (name.rfind("uint", 0) == 0 || name.rfind("int", 0) == 0) {
      const bool is_signed = name[0] == 'i';
      std::string rest = name.substr(is_signed ? 3 : 4);
      bool restricted = false;
      if (rest.size() > 2 && rest.compare(rest.size() - 2, 2, "_r") == 0) {
        restricted = true;
        rest.resize(rest.size() - 2);
      }
      int b;
      if (!parse_int(rest, b) || rest[0] == '-') bad_name(name, "");
      return Format(IntFormat{b, is_signed, restricted});
    }
    if (name.rfind("sbits", 0) == 0) {
      int k;
      if (!parse_int(name.substr(5), k) || k < 0 || k > 23) bad_name(name, "sbits takes k = 0..23");
      return Format(FloatFormat{8, k, 127, true, FloatSpecials::Ieee});
    }
    if (name.rfind("pow", 0) == 0) {
      auto parts = split(name.substr(3), '_');
      int b;
      const bool full = parts.size() == 3 && parts[2] == "full";
      if ((parts.size() != 2 && !full) || !parse_int(parts[0], b) || parts[1].size() < 2 || parts[1][0] != 'a')
        bad_name(name, "power grids are written pow<b>_a<x> or pow<b>_a<x>_full");
      const std::string xs = parts[1].substr(1);
      char* end = nullptr;
      double x = std::strtod(xs.c_str(), &end);
      if (*end != '\0') bad_name(name, "the exponent \"" + xs + "\" is not a number");
      return Format(PowFormat{b, x, full});
    }
    if (name.rfind("fp", 0) == 0) {
      auto parts = split(name.substr(2), '_');
      int n, e, m;
      if (parts.size() < 2 || !parse_int(parts[0], n) || parts[1].size() < 4 || parts[1][0] != 'e')
        bad_name(name, "");
      const auto mpos = parts[1].find('m');
      if (mpos == std::string::npos || !parse_int(parts[1].substr(1, mpos - 1), e) ||
          !parse_int(parts[1].substr(mpos + 1), m) || e < 1 || m < 0)
        bad_name(name, "");
      if (n != 1 + e + m)
        bad_name(name, detail::concat("width ", n, " != 1 + E + M = ", 1 + e + m));
      FloatFormat f{e, m, FloatFormat::default_bias(e), true, FloatSpecials::None};
      bool seen_sp = false, seen_b = false, seen_sub = false;
      for (size_t i = 2; i < parts.size(); ++i) {
        const std::string& t = parts[i];
        if ((t == "ieee" || t == "fn" || t == "sat") && !seen_sp) {
          f.specials = t == "ieee" ? FloatSpecials::Ieee : t == "fn" ? FloatSpecials::NanOnly : FloatSpecials::None;
          seen_sp = true;
        } else if (t.size() > 1 && t[0] == 'b' && !seen_b && parse_int(t.substr(1), f.bias)) {
          seen_b = true;
        } else if (t == "nosub" && !seen_sub) {
          f.subnormals = false;
          seen_sub = true;
        } else {
          bad_name(name, "unknown or repeated suffix \"_" + t + "\" (allowed _ieee|_fn|_sat, _b<bias>, _nosub)");
        }
      }
      return Format(f);
    }
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    if (msg.rfind("format \"", 0) == 0) throw;
    bad_name(name, msg);
  }
  bad_name(name, "");
}

std::string Format::name() const {
  for (const auto& [n, f] : preset_table())
    if (f == *this) return n;
  if (is_int()) {
    const auto& f = as_int();
    return std::string(f.is_signed ? "int" : "uint") + std::to_string(f.bits) + (f.restricted ? "_r" : "");
  }
  if (is_pow())
    return "pow" + std::to_string(as_pow().bits) + "_a" + shortest_double(as_pow().exponent) +
           (as_pow().full ? "_full" : "");
  const auto& f = as_float();
  if (f.exp_bits == 8 && f.bias == 127 && f.subnormals && f.specials == FloatSpecials::Ieee)
    return "sbits" + std::to_string(f.man_bits);
  std::string s = detail::concat("fp", 1 + f.exp_bits + f.man_bits, "_e", f.exp_bits, "m", f.man_bits);
  if (f.specials == FloatSpecials::Ieee) s += "_ieee";
  if (f.specials == FloatSpecials::NanOnly) s += "_fn";
  if (f.bias != FloatFormat::default_bias(f.exp_bits)) s += "_b" + std::to_string(f.bias);
  if (!f.subnormals) s += "_nosub";
  // The bare fp8_e4m3 / fp8_e5m2 are presets with special codes: spell out the saturating variant.
  for (const auto& [n, g] : preset_table())
    if (n == s) return s + "_sat";
  return s;
}

std::string Format::layout() const {
  if (is_int())
    return detail::concat(as_int().is_signed ? "signed" : "unsigned", " integer, ", bits(), " bits, [", code_min(),
                          ", ", code_max(), "]");
  if (is_pow())
    return detail::concat("power grid sign(q)|q|^", shortest_double(as_pow().exponent), ", ", bits(),
                          " bits, q in [", code_min(), ", ", code_max(), "]");
  const auto& f = as_float();
  const char* sp = f.specials == FloatSpecials::Ieee ? "inf+NaN (IEEE)"
                   : f.specials == FloatSpecials::NanOnly ? "NaN only (OCP fn), saturating"
                                                           : "no inf/NaN, saturating";
  return detail::concat("s1 e", f.exp_bits, " m", f.man_bits, ", bias ", f.bias, ", ",
                        f.subnormals ? "subnormals" : "no subnormals", ", ", sp);
}

int Format::bits() const {
  if (is_int()) return as_int().bits;
  if (is_pow()) return as_pow().bits;
  return 1 + as_float().exp_bits + as_float().man_bits;
}

int64_t Format::code_min() const {
  if (is_int()) {
    const auto& f = as_int();
    return f.is_signed ? -(int64_t(1) << (f.bits - 1)) + (f.restricted ? 1 : 0) : 0;
  }
  if (is_pow()) return as_pow().full ? -code_max() - 1 : -code_max();
  return 0;
}

int64_t Format::code_max() const {
  if (is_int()) {
    const auto& f = as_int();
    return f.is_signed ? (int64_t(1) << (f.bits - 1)) - 1 : (int64_t(1) << f.bits) - 1;
  }
  if (is_pow()) return (int64_t(1) << (as_pow().bits - 1)) - 1;
  return (int64_t(1) << bits()) - 1;
}

double Format::max_value() const {
  if (is_int()) return static_cast<double>(code_max());
  if (is_pow()) return detail::pow_levels(as_pow())[code_max()];
  return detail::u2f(detail::float_params(as_float()).max_bits);
}

double Format::min_value() const {
  if (is_int()) return static_cast<double>(code_min());
  if (is_pow()) return -double(detail::pow_levels(as_pow()).back());
  return -max_value();
}

double Format::min_normal() const {
  if (is_float()) return std::ldexp(1.0, 1 - as_float().bias);
  return min_subnormal();
}

double Format::min_subnormal() const {
  if (is_int()) return 1.0;
  if (is_pow()) return detail::pow_levels(as_pow())[1];
  const auto& f = as_float();
  return std::ldexp(1.0, 1 - f.bias - (f.subnormals ? f.man_bits : 0));
}

int64_t Format::num_levels() const {
  if (is_int()) return code_max() - code_min() + 1;
  if (is_pow()) return code_max() - code_min() + 1;
  const auto& f = as_float();
  const int64_t per = int64_t(1) << f.man_bits, fields = (int64_t(1) << f.exp_bits) - 1;
  int64_t normals = fields * per;
  if (f.specials == FloatSpecials::Ieee) normals -= per;
  if (f.specials == FloatSpecials::NanOnly) normals -= 1;
  const int64_t positive = normals + (f.subnormals ? per - 1 : 0);
  return 2 * positive + 1;
}

bool Format::has_nan() const {
  // With M = 0 an IEEE-like top exponent holds only inf (sbits0).
  return is_float() && as_float().specials != FloatSpecials::None &&
         !(as_float().specials == FloatSpecials::Ieee && as_float().man_bits == 0);
}
bool Format::has_inf() const { return is_float() && as_float().specials == FloatSpecials::Ieee; }

std::vector<double> levels(const Format& f) {
  FQ_CHECK(f.num_levels() <= (int64_t(1) << 20) + 1, ConfigError, "format ", f.name(), " has ", f.num_levels(),
           " levels: levels() lists at most 2^20; hint: use max_value()/min_subnormal() instead");
  std::vector<double> out;
  if (f.is_int()) {
    for (int64_t q = f.code_min(); q <= f.code_max(); ++q) out.push_back(static_cast<double>(q));
    return out;
  }
  if (f.is_pow()) {
    const auto lv = detail::pow_levels(f.as_pow());
    for (size_t i = lv.size() - 1; i > 0; --i) out.push_back(-double(lv[i]));
    for (int64_t q = 0; q <= f.code_max(); ++q) out.push_back(lv[q]);
    return out;
  }
  // Positive codes in order of their bit pattern are ascending; the negatives mirror them.
  std::vector<double> pos;
  const int64_t half = int64_t(1) << (f.bits() - 1);
  for (int64_t c = 1; c < half; ++c) {
    const double v = detail::decode_float_code(f.as_float(), static_cast<uint32_t>(c));
    if (std::isfinite(v) && v > 0) pos.push_back(v);
  }
  for (auto it = pos.rbegin(); it != pos.rend(); ++it) out.push_back(-*it);
  out.push_back(0.0);
  out.insert(out.end(), pos.begin(), pos.end());
  return out;
}

}  // namespace flexquant
