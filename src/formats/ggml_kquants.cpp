// ggml's k-quants: layouts, dequantization and llama.cpp's reference rounding (ggml_kquants.h).
#include "ggml_kquants.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace flexquant::kquant {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's "all zero" threshold for a group's largest magnitude

float half_round(float v) { return static_cast<float>(c10::Half(v)); }
uint16_t half_bits(float v) { return c10::Half(v).x; }
float from_half(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return static_cast<float>(c10::Half(b, c10::Half::from_bits()));
}
void put_half(uint8_t* p, float v) {
  const uint16_t b = half_bits(v);
  std::memcpy(p, &b, 2);
}

// Round half to even through the float adder (1.5 * 2^23 leaves the integer in the low mantissa bits), as ggml
// does; no undefined behaviour for any input, exact for |f| < 2^22.
int nearest_int(float f) {
  const float v = f + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

int clampi(int v, int lo, int hi) { return std::max(lo, std::min(hi, v)); }

// Symmetric scale search (make_qx_quants with rmse weights w = x^2 or qw): codes L = l + nmax, l in [-nmax, nmax-1].
// The element of largest magnitude (the first one on ties), or 0 when the group is all zero (< kGroupMaxEps):
// then every code is 0.
float signed_max(int n, const float* x, int* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax >= kGroupMaxEps) return max;
  std::fill(L, L + n, 0);
  return 0.f;
}

float qx_scale(int n, int nmax, const float* x, int* L, const float* qw) {
  const float max = signed_max(n, x, L);
  if (max == 0) return 0.f;
  auto weight = [&](int i) { return qw ? qw[i] : x[i] * x[i]; };
  auto sums = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = weight(i);
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
  };
  auto set_codes = [&](float iscale) {
    for (int i = 0; i < n; ++i) L[i] = nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
  };
  float iscale = -nmax / max, sumlx, suml2;
  sums(iscale, sumlx, suml2);
  set_codes(iscale);
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sums(iscale, sumlx, suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      set_codes(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's symmetric search (make_q3_quants, rmse): coordinate descent on the codes; L = l + nmax.
float q3_scale(int n, int nmax, const float* x, int* L) {
  const float max = signed_max(n, x, L);
  if (max == 0) return 0.f;
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * L[i];
    suml2 += w * L[i] * L[i];
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (!(slx > 0)) continue;  // as written, so that NaN skips too
      float sl2 = suml2 - w * L[i] * L[i];
      const int nl = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (nl == L[i]) continue;
      slx += w * x[i] * nl;
      sl2 += w * nl * nl;
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = nl, sumlx = slx, suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] += nmax;
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Scale and min of x ~ scale * L - min, L in [0, nmax] (make_qkx2_quants): weighted least squares over nstep+1
// trial grids around the min/max one; `mad` scores absolute instead of squared error. Returns scale, *min_out = min.
float qkx2_scale(int n, int nmax, const float* x, const float* w, int* L, float* min_out, float rmin, float rdelta,
                 int nstep, bool mad) {
  float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, 0);
    *min_out = -min;
    return 0.f;
  }
  auto error = [&](float scale, float mn, const int* l) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      float diff = scale * l[i] + mn - x[i];
      diff = mad ? std::fabs(diff) : diff * diff;
      e += w[i] * diff;
    }
    return e;
  };
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  for (int i = 0; i < n; ++i) L[i] = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
  float best = error(scale, min, L);
  int aux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
      aux[i] = l;
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (!(D > 0)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    const float e = error(this_scale, this_min, aux);
    if (e < best) {
      std::copy(aux, aux + n, L);
      best = e, scale = this_scale, min = this_min;
    }
  }
  *min_out = -min;
  return scale;
}

// Non-negative scale of x ~ scale * L, L in [0, nmax] (make_qp_quants: the k-quants' search for their sub-block
// scales and mins under one super-scale, weighted by qw): nine trial grids, then coordinate descent on L.
float qp_scale(int n, int nmax, const float* x, int* L, const float* qw) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = nearest_int(iscale * x[i]);
  const float scale0 = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale0 * L[i];
    best_mse += qw[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * is + nmax) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * l;
      mse += qw[i] * diff * diff;
    }
    if (mse < best_mse) best_mse = mse, iscale = iscale_is;
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = std::min(nmax, nearest_int(iscale * x[i]));
    sumlx += qw[i] * x[i] * L[i];
    suml2 += qw[i] * L[i] * L[i];
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = qw[i];
      float slx = sumlx - w * x[i] * L[i];
      float sl2 = suml2 - w * L[i] * L[i];
      if (!(slx > 0 && sl2 > 0)) continue;
      const int nl = std::min(nmax, nearest_int(x[i] * sl2 / slx));
      if (nl == L[i]) continue;
      slx += w * x[i] * nl;
      sl2 += w * nl * nl;
      if (slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = nl, sumlx = slx, suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Re-rounds every sub-block with a non-zero final scale on the stored grid (the last step of every *_K_ref).
void requantize(const KSpec& s, const float* x, KBlock& b) {
  const int top = (1 << s.bits) - 1;
  for (int j = 0; j < s.subs(); ++j) {
    const float d = b.d * static_cast<float>(b.sc[j]);
    if (d == 0) continue;
    const float dm = b.dmin * static_cast<float>(b.m[j]);
    for (int i = j * s.sub; i < (j + 1) * s.sub; ++i) {
      const int l = s.has_min ? nearest_int((x[i] + dm) / d) : nearest_int(x[i] / d) + s.zq;
      b.q[i] = static_cast<uint8_t>(clampi(l, 0, top));
    }
  }
}

// Q2_K, Q4_K, Q5_K: per sub-block scale and min, each quantized to [0, smax] under its own fp16 super-scale.
KBlock quantize_with_mins(const KSpec& s, const float* x) {
  KBlock b;
  float scales[16], mins[16], weights[32];
  int L[kSuper];
  const int nmax = (1 << s.bits) - 1;
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < s.subs(); ++j) {
    const float* xj = x + j * s.sub;
    if (s.type == GgmlType::Q2_K) {
      for (int l = 0; l < s.sub; ++l) weights[l] = std::fabs(xj[l]);
      scales[j] = qkx2_scale(s.sub, nmax, xj, weights, L + j * s.sub, &mins[j], -0.5f, 0.1f, 15, true);
    } else {
      float sum_x2 = 0;
      for (int l = 0; l < s.sub; ++l) sum_x2 += xj[l] * xj[l];
      const float av_x = std::sqrt(sum_x2 / s.sub);
      for (int l = 0; l < s.sub; ++l) weights[l] = av_x + std::fabs(xj[l]);
      const bool q4 = s.type == GgmlType::Q4_K;
      scales[j] = qkx2_scale(s.sub, nmax, xj, weights, L + j * s.sub, &mins[j], q4 ? -1.f : -0.5f, 0.1f, q4 ? 20 : 15, false);
    }
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float smax = static_cast<float>(s.scale_hi);
  // Q2_K writes nibbles as computed; Q4_K/Q5_K store through uint8_t and cap at 63.
  auto level = [&](float v, float inv) { return std::min(s.scale_hi, nearest_int(inv * v) & 0xFF); };
  const float inv_scale = max_scale > 0 ? smax / max_scale : 0.f;
  const float inv_min = max_min > 0 ? smax / max_min : 0.f;
  for (int j = 0; j < s.subs(); ++j) {
    b.sc[j] = max_scale > 0 ? level(scales[j], inv_scale) : 0;
    b.m[j] = max_min > 0 ? level(mins[j], inv_min) : 0;
  }
  b.d = half_round(max_scale > 0 ? max_scale / smax : 0.f);
  b.dmin = half_round(max_min > 0 ? max_min / smax : 0.f);
  for (int i = 0; i < kSuper; ++i) b.q[i] = static_cast<uint8_t>(L[i]);
  requantize(s, x, b);
  return b;
}

// Q3_K, Q6_K: signed sub-block scales; the one of largest magnitude maps to the most negative integer.
KBlock quantize_symmetric(const KSpec& s, const float* x) {
  KBlock b;
  float scales[16];
  int L[kSuper];
  const bool q3 = s.type == GgmlType::Q3_K;
  float max_scale = 0, amax = 0;
  for (int j = 0; j < s.subs(); ++j) {
    scales[j] = q3 ? q3_scale(s.sub, s.zq, x + j * s.sub, L + j * s.sub)
                   : qx_scale(s.sub, s.zq, x + j * s.sub, L + j * s.sub, nullptr);
    if (std::fabs(scales[j]) > amax) amax = std::fabs(scales[j]), max_scale = scales[j];
  }
  for (int i = 0; i < kSuper; ++i) b.q[i] = static_cast<uint8_t>(L[i]);
  if (!q3 && amax < kGroupMaxEps) return KBlock{};  // Q6_K writes an all-zero block
  const float lo = static_cast<float>(s.scale_lo);    // -32 (Q3_K) or -128 (Q6_K)
  if (max_scale != 0) {
    const float iscale = lo / max_scale;
    for (int j = 0; j < s.subs(); ++j) {
      const int l = nearest_int(iscale * scales[j]);
      b.sc[j] = q3 ? clampi(static_cast<int8_t>(l), s.scale_lo, s.scale_hi) : std::min(s.scale_hi, l);
    }
    b.d = half_round(1 / iscale);
  } else {
    std::fill(b.sc, b.sc + s.subs(), s.scale_lo);  // Q3_K's zeroed scale bytes read back as -32
    b.d = 0;
  }
  requantize(s, x, b);
  return b;
}

// Codes 0..3 of 256 weights in 2-bit planes: byte (j/128)*32 + l holds elements j+l, +32, +64, +96 (Q2_K, Q3_K).
void put_2bit_planes(const uint8_t* q, uint8_t* out) {
  for (int j = 0; j < kSuper; j += 128)
    for (int l = 0; l < 32; ++l)
      out[j / 4 + l] = static_cast<uint8_t>((q[j + l] & 3) | (q[j + l + 32] & 3) << 2 | (q[j + l + 64] & 3) << 4 |
                                            (q[j + l + 96] & 3) << 6);
}
void get_2bit_planes(const uint8_t* in, uint8_t* q) {
  for (int j = 0; j < kSuper; j += 128)
    for (int l = 0; l < 32; ++l)
      for (int k = 0; k < 4; ++k) q[j + l + 32 * k] = (in[j / 4 + l] >> (2 * k)) & 3;
}

// Codes in nibbles: byte (j/64)*32 + l holds element j+l (low) and j+l+32 (high) (Q4_K, Q5_K low bits).
void put_nibbles(const uint8_t* q, uint8_t* out) {
  for (int j = 0; j < kSuper; j += 64)
    for (int l = 0; l < 32; ++l) out[j / 2 + l] = static_cast<uint8_t>((q[j + l] & 0xF) | (q[j + l + 32] & 0xF) << 4);
}
void get_nibbles(const uint8_t* in, uint8_t* q) {
  for (int j = 0; j < kSuper; j += 64)
    for (int l = 0; l < 32; ++l) q[j + l] = in[j / 2 + l] & 0xF, q[j + l + 32] = in[j / 2 + l] >> 4;
}

// Eight 6-bit scales and mins in 12 bytes (Q4_K, Q5_K): the first four whole, the last four split in nibbles
// with their top two bits in the high bits of the first eight bytes.
void put_scales_k4(const KBlock& b, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const int ls = b.sc[j], lm = b.m[j];
    if (j < 4) {
      s[j] = static_cast<uint8_t>(ls), s[j + 4] = static_cast<uint8_t>(lm);
    } else {
      s[j + 4] = static_cast<uint8_t>((ls & 0xF) | (lm & 0xF) << 4);
      s[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
}
void get_scales_k4(const uint8_t* s, KBlock& b) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      b.sc[j] = s[j] & 63, b.m[j] = s[j + 4] & 63;
    } else {
      b.sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
      b.m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
  }
}

// Sixteen 6-bit scales (stored + 32) in 12 bytes (Q3_K): low nibbles in bytes 0..7, top two bits in bytes 8..11.
void put_scales_q3(const KBlock& b, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = b.sc[j] + 32;
    if (j < 8) s[j] = static_cast<uint8_t>(l & 0xF);
    else s[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
    s[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
}
void get_scales_q3(const uint8_t* s, KBlock& b) {
  for (int j = 0; j < 16; ++j) {
    int l = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    l |= ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4;
    b.sc[j] = l - 32;
  }
}

// The importance-weighted searches (quantize_row_*_K_impl, what ggml_quantize_chunk runs with an imatrix):
// per-weight importance qw * sqrt(sigma2 + x^2), sub-block searches as the reference but weighted, and the
// sub-scales (and mins) found by qp_scale / qx_scale weighted by each sub-block's total importance.
KBlock imatrix_with_mins(const KSpec& s, const float* x, const float* qw) {
  KBlock b;
  float scales[16], mins[16], sw[16], weights[32];
  int L[kSuper], Ls[16], Lm[16];
  const int nmax = (1 << s.bits) - 1;
  float sumx2 = 0;
  for (int j = 0; j < kSuper; ++j) sumx2 += x[j] * x[j];
  const float sigma2 = (s.type == GgmlType::Q2_K ? 1 : 2) * sumx2 / kSuper;
  for (int j = 0; j < s.subs(); ++j) {
    const float* xj = x + j * s.sub;
    sw[j] = 0;
    for (int l = 0; l < s.sub; ++l) weights[l] = qw[j * s.sub + l] * std::sqrt(sigma2 + xj[l] * xj[l]);
    for (int l = 0; l < s.sub; ++l) sw[j] += weights[l];
    scales[j] = qkx2_scale(s.sub, nmax, xj, weights, L + j * s.sub, &mins[j], -0.9f, 0.05f, 36, false);
  }
  const float d = qp_scale(s.subs(), s.scale_hi, scales, Ls, sw);
  const float dmin = qp_scale(s.subs(), s.scale_hi, mins, Lm, sw);
  for (int j = 0; j < s.subs(); ++j) {
    // Q4_K / Q5_K store through uint8_t and cap at 63; Q2_K's nibbles are at most 15 already.
    b.sc[j] = std::min(s.scale_hi, Ls[j] & 0xFF);
    b.m[j] = std::min(s.scale_hi, Lm[j] & 0xFF);
  }
  b.d = half_round(d);
  b.dmin = half_round(dmin);
  for (int i = 0; i < kSuper; ++i) b.q[i] = static_cast<uint8_t>(L[i]);
  requantize(s, x, b);
  return b;
}

KBlock imatrix_symmetric(const KSpec& s, const float* x, const float* qw) {
  KBlock b;
  float scales[16], sw[16], weights[16];
  int L[kSuper], Ls[16];
  const bool q3 = s.type == GgmlType::Q3_K;
  float sumx2 = 0;
  for (int j = 0; j < kSuper; ++j) sumx2 += x[j] * x[j];
  const float sigma2 = 2 * sumx2 / kSuper;
  float max_scale = 0, amax = 0;
  for (int j = 0; j < s.subs(); ++j) {
    const float* xj = x + j * s.sub;
    const float* qj = qw + j * s.sub;
    if (q3) {  // Q3_K weights its search; Q6_K passes the importance as it is
      sw[j] = 0;
      for (int l = 0; l < s.sub; ++l) weights[l] = qj[l] * std::sqrt(sigma2 + xj[l] * xj[l]);
      for (int l = 0; l < s.sub; ++l) sw[j] += weights[l];
    }
    scales[j] = qx_scale(s.sub, s.zq, xj, L + j * s.sub, q3 ? weights : qj);
    if (std::fabs(scales[j]) > amax) amax = std::fabs(scales[j]), max_scale = scales[j];
  }
  for (int i = 0; i < kSuper; ++i) b.q[i] = static_cast<uint8_t>(L[i]);
  if (q3) {
    const float d = qx_scale(s.subs(), 32, scales, Ls, sw);  // codes l + 32 are the stored 6-bit scales
    for (int j = 0; j < s.subs(); ++j) b.sc[j] = (Ls[j] & 63) - 32;
    b.d = half_round(d);
  } else {
    if (amax < kGroupMaxEps) return KBlock{};
    const float iscale = -128.f / max_scale;
    for (int j = 0; j < s.subs(); ++j) b.sc[j] = std::min(127, nearest_int(iscale * scales[j]));
    b.d = half_round(1 / iscale);
  }
  requantize(s, x, b);
  return b;
}

}  // namespace

float qx_search(int n, int nmax, const float* x, int* L, const float* qw) { return qx_scale(n, nmax, x, L, qw); }
float qkx3_search(int n, int nmax, const float* x, const float* w, int* L, float* min) {
  return qkx2_scale(n, nmax, x, w, L, min, -0.9f, 0.05f, 36, false);
}

KBlock quantize_imatrix(const KSpec& s, const float* x, const float* qw) {
  return s.has_min ? imatrix_with_mins(s, x, qw) : imatrix_symmetric(s, x, qw);
}

namespace {
const KSpec kSpecs[] = {
    {GgmlType::Q2_K, 16, 2, true, 0, 15, 0, 84},      {GgmlType::Q3_K, 16, 3, false, -32, 31, 4, 110},
    {GgmlType::Q4_K, 32, 4, true, 0, 63, 0, 144},     {GgmlType::Q5_K, 32, 5, true, 0, 63, 0, 176},
    {GgmlType::Q6_K, 16, 6, false, -128, 127, 32, 210},
};
}  // namespace

const KSpec* kspec(GgmlType t) {
  for (const KSpec& s : kSpecs)
    if (s.type == t) return &s;
  return nullptr;
}

const KSpec* kspec(int bits, int64_t sub, bool has_min) {
  for (const KSpec& s : kSpecs)
    if (s.bits == bits && s.sub == sub && s.has_min == has_min) return &s;
  return nullptr;
}

void pack(const KSpec& s, const KBlock& b, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(s.bytes));
  switch (s.type) {
    case GgmlType::Q2_K:
      for (int j = 0; j < 16; ++j) out[j] = static_cast<uint8_t>((b.sc[j] & 0xF) | (b.m[j] & 0xF) << 4);
      put_2bit_planes(b.q, out + 16);
      put_half(out + 80, b.d), put_half(out + 82, b.dmin);
      return;
    case GgmlType::Q3_K: {
      for (int i = 0; i < kSuper; ++i)
        if (b.q[i] > 3) out[i % 32] |= static_cast<uint8_t>(1u << (i / 32));
      put_2bit_planes(b.q, out + 32);
      put_scales_q3(b, out + 96);
      put_half(out + 108, b.d);
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      put_half(out, b.d), put_half(out + 2, b.dmin);
      put_scales_k4(b, out + 4);
      const bool q5 = s.type == GgmlType::Q5_K;
      if (q5)
        for (int i = 0; i < kSuper; ++i)
          if (b.q[i] > 15) out[16 + i % 32] |= static_cast<uint8_t>(1u << (i / 32));
      put_nibbles(b.q, out + (q5 ? 48 : 16));
      return;
    }
    case GgmlType::Q6_K: {
      for (int j = 0; j < kSuper; j += 128) {
        uint8_t* ql = out + j / 2;
        uint8_t* qh = out + 128 + j / 4;
        for (int l = 0; l < 32; ++l) {
          const uint8_t* q = b.q + j + l;
          ql[l] = static_cast<uint8_t>((q[0] & 0xF) | (q[64] & 0xF) << 4);
          ql[l + 32] = static_cast<uint8_t>((q[32] & 0xF) | (q[96] & 0xF) << 4);
          qh[l] = static_cast<uint8_t>((q[0] >> 4) | (q[32] >> 4) << 2 | (q[64] >> 4) << 4 | (q[96] >> 4) << 6);
        }
      }
      for (int j = 0; j < 16; ++j) out[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(b.sc[j]));
      put_half(out + 208, b.d);
      return;
    }
    default: return;
  }
}

KBlock unpack(const KSpec& s, const uint8_t* in) {
  KBlock b;
  switch (s.type) {
    case GgmlType::Q2_K:
      for (int j = 0; j < 16; ++j) b.sc[j] = in[j] & 0xF, b.m[j] = in[j] >> 4;
      get_2bit_planes(in + 16, b.q);
      b.d = from_half(in + 80), b.dmin = from_half(in + 82);
      break;
    case GgmlType::Q3_K:
      get_2bit_planes(in + 32, b.q);
      for (int i = 0; i < kSuper; ++i) b.q[i] |= static_cast<uint8_t>(((in[i % 32] >> (i / 32)) & 1) << 2);
      get_scales_q3(in + 96, b);
      b.d = from_half(in + 108);
      break;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      b.d = from_half(in), b.dmin = from_half(in + 2);
      get_scales_k4(in + 4, b);
      const bool q5 = s.type == GgmlType::Q5_K;
      get_nibbles(in + (q5 ? 48 : 16), b.q);
      if (q5)
        for (int i = 0; i < kSuper; ++i) b.q[i] |= static_cast<uint8_t>(((in[16 + i % 32] >> (i / 32)) & 1) << 4);
      break;
    }
    case GgmlType::Q6_K:
      for (int j = 0; j < kSuper; j += 128) {
        const uint8_t* ql = in + j / 2;
        const uint8_t* qh = in + 128 + j / 4;
        for (int l = 0; l < 32; ++l) {
          b.q[j + l] = static_cast<uint8_t>((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4);
          b.q[j + l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4);
          b.q[j + l + 64] = static_cast<uint8_t>((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
          b.q[j + l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
      }
      for (int j = 0; j < 16; ++j) b.sc[j] = static_cast<int8_t>(in[192 + j]);
      b.d = from_half(in + 208);
      break;
    default: break;
  }
  return b;
}

void dequantize(const KSpec& s, const KBlock& b, float* y) {
  for (int j = 0; j < s.subs(); ++j) {
    const float dl = b.d * static_cast<float>(b.sc[j]);
    const float ml = b.dmin * static_cast<float>(b.m[j]);
    for (int i = j * s.sub; i < (j + 1) * s.sub; ++i) {
      const float v = dl * static_cast<float>(static_cast<int>(b.q[i]) - s.zq);
      y[i] = s.has_min ? v - ml : v;
    }
  }
}

KBlock quantize_ref(const KSpec& s, const float* x) {
  return s.has_min ? quantize_with_mins(s, x) : quantize_symmetric(s, x);
}

}  // namespace flexquant::kquant
