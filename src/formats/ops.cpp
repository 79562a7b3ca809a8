// encode / decode / quantize on fp32 tensors: the fast paths. One parallel loop (at::parallel_for) walks
// the flat tensor in segments that share one scale and zero point (per tensor, per output channel, per
// group), and each segment runs a tight element loop over raw pointers. The element rounding is exact
// (src/rounding/round_kernels.h); tests/reference/ holds the slow textbook version these are checked against.
//
// Affine integer quantizer (methods.md §10.4): q = clamp(round(x / s) + z, qmin, qmax), x_hat = (q - z) * s.
// Clamping x / s to [qmin - z, qmax - z] before rounding gives the same q (the bounds are integers and
// rounding is monotone) and keeps the rounding argument small.
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>

#include "flexquant/error.h"
#include "format_internal.h"

namespace flexquant {
namespace {

using detail::f2u;
using detail::u2f;

constexpr int64_t kGrain = 1 << 15;

// ---- scales: which scale / zero point each flat index uses

struct Scales {
  const float* scale = nullptr;
  const int32_t* zp = nullptr;  // null: all zero
  Granularity gran = Granularity::PerTensor;
  int64_t n = 0, K = 1, g = 1, G = 1;
  torch::Tensor scale_t, zp_t;  // keep the buffers alive

  // Index of the parameters for flat index i; *end = end of the segment sharing them.
  int64_t seg(int64_t i, int64_t* end) const {
    switch (gran) {
      case Granularity::PerTensor: *end = n; return 0;
      case Granularity::PerChannel: {
        const int64_t c = i / K;
        *end = (c + 1) * K;
        return c;
      }
      case Granularity::PerGroup: {
        const int64_t c = i / K, j = (i - c * K) / g;
        *end = c * K + std::min((j + 1) * g, K);
        return c * G + j;
      }
    }
    *end = n;
    return 0;
  }
};

Scales unit_scales(int64_t n) {
  Scales s;
  s.scale_t = torch::ones({1}, torch::kFloat);
  s.scale = s.scale_t.data_ptr<float>();
  s.n = n;
  return s;
}

Scales make_scales(const torch::Tensor& x, const Format& f, const ScaleParams& qp) {
  Scales s;
  s.n = x.numel();
  s.gran = qp.granularity;
  FQ_CHECK(qp.scale.defined(), ConfigError, "ScaleParams.scale is undefined; hint: use ScaleParams::per_tensor(1.0f)");
  int64_t expect = 1;
  if (qp.granularity != Granularity::PerTensor) {
    FQ_CHECK(x.dim() >= 1 && x.size(0) > 0, ConfigError, to_string(qp.granularity),
             " quantization needs a tensor with an output-channel axis; got shape ", x.sizes());
    s.K = x.numel() / x.size(0);
    expect = x.size(0);
  }
  if (qp.granularity == Granularity::PerGroup) {
    FQ_CHECK(qp.group_size >= 1, ConfigError, "group_size ", qp.group_size, " is not valid: allowed >= 1");
    s.g = qp.group_size;
    s.G = (s.K + s.g - 1) / s.g;
    expect = x.size(0) * s.G;
  }
  FQ_CHECK(qp.scale.numel() == expect, ConfigError, "scale has ", qp.scale.numel(), " entries (shape ",
           qp.scale.sizes(), ") but ", to_string(qp.granularity), " on shape ", x.sizes(),
           (qp.granularity == Granularity::PerGroup ? detail::concat(" with group_size ", qp.group_size) : ""),
           " needs ", expect);
  s.scale_t = qp.scale.detach().to(torch::kFloat).contiguous();
  FQ_CHECK((s.scale_t > 0).all().item<bool>() && torch::isfinite(s.scale_t).all().item<bool>(), NumericError,
           "scale has entries that are <= 0 or not finite (min ", s.scale_t.min().item<float>(),
           "); hint: guard all-zero channels when choosing scales");
  s.scale = s.scale_t.data_ptr<float>();
  if (qp.zero_point.defined()) {
    FQ_CHECK(qp.zero_point.numel() == expect, ConfigError, "zero_point has ", qp.zero_point.numel(),
             " entries but scale needs ", expect);
    s.zp_t = qp.zero_point.detach().to(torch::kInt).contiguous();
    const int64_t zmin = s.zp_t.min().item<int>(), zmax = s.zp_t.max().item<int>();
    if (!f.is_int())
      FQ_CHECK(zmin == 0 && zmax == 0, ConfigError, "format ", f.name(),
               " takes no zero point (it is symmetric by construction); got zero points in [", zmin, ", ", zmax,
               "]; hint: leave ScaleParams.zero_point undefined");
    else
      FQ_CHECK(zmin >= f.code_min() && zmax <= f.code_max(), ConfigError, "zero_point range [", zmin, ", ", zmax,
               "] is not valid for ", f.name(), ": allowed [", f.code_min(), ", ", f.code_max(), "]");
    s.zp = s.zp_t.data_ptr<int32_t>();
  }
  return s;
}

torch::Tensor as_input(const torch::Tensor& x) {
  FQ_CHECK(x.scalar_type() == torch::kFloat, ConfigError, "quantize/encode take fp32 tensors; got ",
           x.scalar_type(), "; hint: call .to(torch::kFloat) first");
  return x.contiguous();
}

// Runs body(i0, i1, scale, zero_point) over all segments of [0, n), in parallel.
template <class Body>
void for_segments(const Scales& sc, Body&& body) {
  at::parallel_for(0, sc.n, kGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    while (i < e) {
      int64_t end = e;
      const int64_t p = sc.seg(i, &end);
      end = std::min(end, e);
      body(i, end, sc.scale[p], sc.zp ? sc.zp[p] : 0);
      i = end;
    }
  });
}

// Calls fn(std::integral_constant<RoundingMode, M>) so each mode gets its own compiled loop.
template <class Fn>
void dispatch_mode(RoundingMode m, Fn&& fn) {
  using R = RoundingMode;
  switch (m) {
    case R::NearestEven: fn(std::integral_constant<R, R::NearestEven>{}); return;
    case R::NearestAway: fn(std::integral_constant<R, R::NearestAway>{}); return;
    case R::TowardZero: fn(std::integral_constant<R, R::TowardZero>{}); return;
    case R::Up: fn(std::integral_constant<R, R::Up>{}); return;
    case R::Down: fn(std::integral_constant<R, R::Down>{}); return;
    case R::Stochastic: fn(std::integral_constant<R, R::Stochastic>{}); return;
  }
}

// ---- integers

// Round-half-even of |t| < 2^22 by the 1.5 * 2^23 trick (needs the default FE_TONEAREST); zero comes out +0.
inline float rne_small(float t) {
  constexpr float kMagic = 12582912.0f;
  return (t + kMagic) - kMagic;
}

template <RoundingMode M>
inline float int_round(float t, float lo, float hi, uint64_t key, int64_t i) {
  t = t < lo ? lo : (t > hi ? hi : t);  // NaN passes (both comparisons are false)
  if constexpr (M == RoundingMode::NearestEven) return rne_small(t);
  uint64_t r = 0;
  if constexpr (M == RoundingMode::Stochastic) r = detail::splitmix_at(key, static_cast<uint64_t>(i));
  return detail::round_int_grid(t, M, r);
}

// ---- minifloats

// Round-half-even fast path for minifloats whose steps 2^se satisfy -149 <= se <= 104 and m <= 22 (fp8/6/4,
// fp16, ... not bf16/sbits): adding C = 2^(se+23) to |t| leaves exactly the multiples of 2^se, so the FPU's
// own round-half-even does the rounding ((|t| + C) - C, ties to even multiples, as nearbyint(t / step)).
// The ifunc resolvers of target_clones run while the dynamic loader relocates, before ThreadSanitizer's runtime
// exists, and TSan instruments them (a segfault at start): the TSan build keeps the baseline version only.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FQ_AVX2_CLONES
#endif
#endif
#ifndef FQ_AVX2_CLONES
#define FQ_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif

// Branch-free, so the compiler vectorises it; built for AVX2 and for baseline x86-64, picked at load time.
// (Streaming stores were tried: slower here, the 64 MiB working set stays in the host's cache.)
bool float_rne_fast_ok(const detail::FloatParams& p) {
  return p.emin >= -126 && p.man_bits <= 22 && p.emax - p.man_bits + 23 <= 127 && p.emin - p.man_bits >= -149;
}

FQ_INLINE float float_rne_one(float t, const detail::FloatParams& p, uint32_t ovf, int sub_se) {
  const uint32_t b = f2u(t), a = b & 0x7fffffffu;
  const int field = int(a >> 23);
  const int ef = (field > 1 ? field : 1) - 127;
  const int efc = ef < p.emax ? ef : p.emax;  // keeps C finite; ef > emax is overflow anyway
  const int se = efc >= p.emin ? efc - p.man_bits : sub_se;
  const float c = u2f(uint32_t(se + 23 + 127) << 23);
  const uint32_t r = f2u((u2f(a) + c) - c);
  uint32_t res = (r > p.max_bits || ef > p.emax) ? ovf : r;
  res = a > 0x7f800000u ? (a | 0x400000u) : res;
  return u2f((b & 0x80000000u) | res);
}

FQ_AVX2_CLONES void float_rne_kernel(const float* x, float* y, int64_t n, float s,
                                                                          const detail::FloatParams p) {
  const uint32_t ovf = p.ieee ? 0x7f800000u : p.max_bits;
  const int sub_se = p.subnormals ? p.emin - p.man_bits : p.emin;
  if (s == 1.0f) {
    for (int64_t i = 0; i < n; ++i) y[i] = float_rne_one(x[i], p, ovf, sub_se);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = float_rne_one(x[i] / s, p, ovf, sub_se) * s;
  }
}

// Integer round-half-even: clamp, then the 1.5 * 2^23 trick (rne_small).
FQ_INLINE float int_rne_one(float x, float s, float lo, float hi) {
  float t = x / s;
  t = t < lo ? lo : (t > hi ? hi : t);
  return rne_small(t) * s;
}

FQ_AVX2_CLONES void int_rne_kernel(const float* x, float* y, int64_t n, float s,
                                                                        float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) y[i] = int_rne_one(x[i], s, lo, hi);
}


template <RoundingMode M>
inline float float_round(float t, const detail::FloatParams& p, uint64_t key, int64_t i) {
  uint64_t r = 0;
  if constexpr (M == RoundingMode::Stochastic) r = detail::splitmix_at(key, static_cast<uint64_t>(i));
  return detail::round_float_grid(t, p, M, r);
}

// Code of a value already on the grid (or inf / NaN).
inline int32_t float_code(float v, const FloatFormat& f, bool* nan_seen) {
  const uint32_t b = f2u(v), a = b & 0x7fffffffu;
  const int m = f.man_bits, e = f.exp_bits;
  const uint32_t sign = (b >> 31) << (m + e);
  const uint32_t top = (1u << e) - 1;
  if (a > 0x7f800000u) {
    if (f.specials == FloatSpecials::Ieee && m > 0) return int32_t(sign | (top << m) | (1u << (m - 1)));
    if (f.specials == FloatSpecials::NanOnly) return int32_t(sign | (top << m) | ((1u << m) - 1));
    *nan_seen = true;
    return 0;
  }
  if (a == 0x7f800000u) return int32_t(sign | (top << m));
  if (a == 0) return int32_t(sign);
  const uint32_t field = a >> 23;
  const int te = detail::true_exponent(a);
  const int emin = 1 - f.bias;
  if (te >= emin) {
    // Fraction bits of v normalised to 1.f (an fp32 subnormal is shifted up first).
    const uint32_t frac = field ? (a & 0x7fffffu) : ((a << (23 - (te + 149))) & 0x7fffffu);
    return int32_t(sign | (uint32_t(te + f.bias) << m) | (frac >> (23 - m)));
  }
  // Subnormal in the format: mantissa = v / 2^(emin - m), exact because v is on the grid.
  const int ef = int(field ? field : 1) - 127;
  const uint32_t S = (a & 0x7fffffu) | (field ? 0x800000u : 0u);
  return int32_t(sign | (S >> (emin - m - ef + 23)));
}

// ---- power grids

struct PowTables {
  std::vector<float> L;     // |q|^a, q = 0 .. the largest negative index
  std::vector<double> mid;  // (L[q] + L[q+1]) / 2, exact in double
  int qpos = 0, qneg = 0;   // largest index on each side (they differ for _full grids)
  double inv_a = 1.0;
  explicit PowTables(const Format& f)
      : L(detail::pow_levels(f.as_pow())), qpos(int(f.code_max())), qneg(int(-f.code_min())),
        inv_a(1.0 / f.as_pow().exponent) {
    mid.resize(L.size() - 1);
    for (size_t q = 0; q + 1 < L.size(); ++q) mid[q] = (double(L[q]) + double(L[q + 1])) * 0.5;
  }
};

// Index j in [0, top] of the level |t| rounds to. a: |t|, not NaN.
inline int pow_index(float a, const PowTables& T, int top, detail::MagMode mm, uint64_t r) {
  if (a >= T.L[top]) return top;
  int g = static_cast<int>(std::pow(double(a), T.inv_a));
  g = std::max(0, std::min(g, top - 1));
  while (g > 0 && T.L[g] > a) --g;
  while (T.L[g + 1] <= a) ++g;
  if (a == T.L[g]) return g;
  const double x = a;
  switch (mm) {
    case detail::MagMode::NearestEven: return x > T.mid[g] ? g + 1 : x < T.mid[g] ? g : g + (g & 1);
    case detail::MagMode::NearestAway: return x >= T.mid[g] ? g + 1 : g;
    case detail::MagMode::Trunc: return g;
    case detail::MagMode::Away: return g + 1;
    case detail::MagMode::Stochastic: {
      const double p = (x - double(T.L[g])) / (double(T.L[g + 1]) - double(T.L[g]));
      return double(r >> 11) * 0x1.0p-53 < p ? g + 1 : g;
    }
  }
  return g;
}

// Signed level index of t; NaN -> sets *nan and returns 0.
template <RoundingMode M>
inline int pow_round(float t, const PowTables& T, uint64_t key, int64_t i, bool* nan) {
  if (std::isnan(t)) {
    *nan = true;
    return 0;
  }
  const bool neg = std::signbit(t);
  uint64_t r = 0;
  if constexpr (M == RoundingMode::Stochastic) r = detail::splitmix_at(key, static_cast<uint64_t>(i));
  const int j = pow_index(std::fabs(t), T, neg ? T.qneg : T.qpos, detail::mag_mode(M, neg), r);
  return neg ? -j : j;
}

// ---- the drivers

enum class Out { Values, Codes };

template <Out O>
torch::Tensor run(const torch::Tensor& x_in, const Format& f, const Scales& sc, RoundingMode mode, uint64_t seed,
                  torch::Tensor y = {}) {
  const torch::Tensor x = as_input(x_in);
  if (!y.defined())
    y = torch::empty(x.sizes(), x.options().dtype(O == Out::Values ? torch::kFloat : torch::kInt));
  if (x.numel() == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yf = O == Out::Values ? y.data_ptr<float>() : nullptr;
  int32_t* yc = O == Out::Codes ? y.data_ptr<int32_t>() : nullptr;
  const uint64_t key = detail::splitmix_key(seed);
  std::atomic<bool> nan_seen{false};

  if (f.is_int()) {
    const float qmin = float(f.code_min()), qmax = float(f.code_max());
    dispatch_mode(mode, [&](auto mc) {
      constexpr RoundingMode M = decltype(mc)::value;
      for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t z) {
        const float lo = qmin - float(z), hi = qmax - float(z);
        if constexpr (O == Out::Values && M == RoundingMode::NearestEven) {
          int_rne_kernel(xp + i0, yf + i0, i1 - i0, s, lo, hi);
        } else if constexpr (O == Out::Values) {
          for (int64_t i = i0; i < i1; ++i) yf[i] = int_round<M>(xp[i] / s, lo, hi, key, i) * s;
        } else {
          bool nan = false;
          for (int64_t i = i0; i < i1; ++i) {
            const float r = int_round<M>(xp[i] / s, lo, hi, key, i);
            nan |= std::isnan(r);
            yc[i] = std::isnan(r) ? 0 : int32_t(r) + z;
          }
          if (nan) nan_seen = true;
        }
      });
    });
  } else if (f.is_float()) {
    const auto p = detail::float_params(f.as_float());
    const FloatFormat ff = f.as_float();
    const bool fast_rne = float_rne_fast_ok(p);
    dispatch_mode(mode, [&](auto mc) {
      constexpr RoundingMode M = decltype(mc)::value;
      for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t) {
        if constexpr (O == Out::Values && M == RoundingMode::NearestEven) {
          if (fast_rne) float_rne_kernel(xp + i0, yf + i0, i1 - i0, s, p);
          else for (int64_t i = i0; i < i1; ++i) yf[i] = float_round<M>(xp[i] / s, p, key, i) * s;
        } else if constexpr (O == Out::Values) {
          for (int64_t i = i0; i < i1; ++i) yf[i] = float_round<M>(xp[i] / s, p, key, i) * s;
        } else {
          bool nan = false;
          for (int64_t i = i0; i < i1; ++i) yc[i] = float_code(float_round<M>(xp[i] / s, p, key, i), ff, &nan);
          if (nan) nan_seen = true;
        }
      });
    });
  } else {
    const PowTables T(f);
    dispatch_mode(mode, [&](auto mc) {
      constexpr RoundingMode M = decltype(mc)::value;
      for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t) {
        bool nan = false;
        for (int64_t i = i0; i < i1; ++i) {
          const float t = xp[i] / s;
          bool this_nan = false;
          const int q = pow_round<M>(t, T, key, i, &this_nan);
          if constexpr (O == Out::Values) {
            yf[i] = this_nan ? t : (q == 0 ? 0.0f : (q < 0 ? -T.L[-q] : T.L[q]) * s);
          } else {
            nan |= this_nan;
            yc[i] = q;
          }
        }
        if (nan) nan_seen = true;
      });
    });
  }
  FQ_CHECK(!nan_seen, NumericError, "encode: input has NaN but format ", f.name(),
           " has no NaN code; hint: quantize() keeps NaN, or clean the input first");
  return y;
}

torch::Tensor run_decode(const torch::Tensor& codes_in, const Format& f, const Scales& sc) {
  FQ_CHECK(!codes_in.is_floating_point() && !codes_in.is_complex() && codes_in.scalar_type() != torch::kBool,
           ConfigError, "decode takes integer codes; got ", codes_in.scalar_type());
  torch::Tensor codes = codes_in.to(torch::kLong).contiguous();
  if (f.is_float() && f.bits() == 32) codes = codes.bitwise_and(int64_t(0xffffffff));  // int32 patterns read < 0
  torch::Tensor y = torch::empty(codes.sizes(), codes.options().dtype(torch::kFloat));
  if (codes.numel() == 0) return y;
  const int64_t cmin = codes.min().item<int64_t>(), cmax = codes.max().item<int64_t>();
  FQ_CHECK(cmin >= f.code_min() && cmax <= f.code_max(), NumericError, "decode: codes span [", cmin, ", ", cmax,
           "] but format ", f.name(), " has codes [", f.code_min(), ", ", f.code_max(), "]");
  const int64_t* cp = codes.data_ptr<int64_t>();
  float* yp = y.data_ptr<float>();
  if (f.is_int()) {
    for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t z) {
      for (int64_t i = i0; i < i1; ++i) yp[i] = float(cp[i] - z) * s;
    });
  } else if (f.is_float()) {
    const FloatFormat ff = f.as_float();
    for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t) {
      for (int64_t i = i0; i < i1; ++i) yp[i] = detail::decode_float_code(ff, uint32_t(cp[i])) * s;
    });
  } else {
    const auto L = detail::pow_levels(f.as_pow());
    for_segments(sc, [&](int64_t i0, int64_t i1, float s, int32_t) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t q = cp[i];
        yp[i] = q == 0 ? 0.0f : (q < 0 ? -L[-q] : L[q]) * s;
      }
    });
  }
  return y;
}

}  // namespace

torch::Tensor quantize(const torch::Tensor& x, const Format& f, RoundingMode mode, uint64_t seed) {
  return run<Out::Values>(x, f, unit_scales(x.numel()), mode, seed);
}
torch::Tensor quantize(const torch::Tensor& x, const Format& f, const ScaleParams& qp, RoundingMode mode, uint64_t seed) {
  return run<Out::Values>(x, f, make_scales(x, f, qp), mode, seed);
}
void quantize_out(torch::Tensor& out, const torch::Tensor& x, const Format& f, const ScaleParams& qp,
                  RoundingMode mode, uint64_t seed) {
  FQ_CHECK(out.defined() && out.scalar_type() == torch::kFloat && out.is_contiguous() && out.sizes() == x.sizes(),
           ConfigError, "quantize_out: out must be a contiguous fp32 tensor of x's shape ", x.sizes(), "; got ",
           out.defined() ? out.sizes() : at::IntArrayRef{});
  run<Out::Values>(x, f, make_scales(x, f, qp), mode, seed, out);
}
torch::Tensor encode(const torch::Tensor& x, const Format& f, RoundingMode mode, uint64_t seed) {
  return run<Out::Codes>(x, f, unit_scales(x.numel()), mode, seed);
}
torch::Tensor encode(const torch::Tensor& x, const Format& f, const ScaleParams& qp, RoundingMode mode, uint64_t seed) {
  return run<Out::Codes>(x, f, make_scales(x, f, qp), mode, seed);
}
torch::Tensor decode(const torch::Tensor& codes, const Format& f) {
  return run_decode(codes, f, unit_scales(codes.numel()));
}
torch::Tensor decode(const torch::Tensor& codes, const Format& f, const ScaleParams& qp) {
  return run_decode(codes, f, make_scales(codes, f, qp));
}

}  // namespace flexquant
