// Weight-quantization primitives: the grouped view, the levels every method rounds onto (WeightLevels), initial
// grids (MinMax and the L2.4 MSE searches of the FlexRound LLM code and the FlexRound/BRECQ CNN code,
// methods.md §1.2 and §10.12), round-to-nearest and the QuantizedTensor every rounder exports. Conventions are
// documented in include/flexquant/quantizer.h.
#include "flexquant/quantizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <sstream>

#include "flexquant/error.h"
#include "kquant_grid.h"

namespace flexquant {
namespace {

constexpr double kMinScale = 1e-8;  // FlexRound LLM code clamps the scale at 1e-8
constexpr double kSearchP = 2.4;    // L2.4 error of every MSE search
constexpr int kAsymFractions = 100;
constexpr int kSymShrinks = 80;

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}


// The reduction dims of the grouped view for a granularity: per-tensor reduces everything.
std::vector<int64_t> reduce_dims(Granularity g) {
  if (g == Granularity::PerTensor) return {0, 1, 2};
  return {2};
}

// Rows of the search: [R, n] where every row shares one grid.
torch::Tensor search_rows(const torch::Tensor& wg, Granularity g) {
  if (g == Granularity::PerTensor) return wg.reshape({1, -1});
  return wg.reshape({wg.size(0) * wg.size(1), wg.size(2)});
}

// Asymmetric L2.4 2-D search (FlexRound LLM code): for fraction i/100 of the range and every zero point zp,
// the grid Δ = range*i/100/qmax with clip range [-zp*Δ, (qmax-zp)*Δ]. rows: [R, n]; mn/mx: [R, 1].
void mse_search_asym(const torch::Tensor& rows, const torch::Tensor& mn, const torch::Tensor& mx, int64_t qmax,
                     torch::Tensor& best_scale, torch::Tensor& best_zp) {
  const int64_t R = rows.size(0), n = rows.size(1);
  auto range = mx - mn;
  auto zp = torch::arange(qmax + 1, rows.options()).view({1, 1, -1});  // [1,1,Z]
  auto lo = -zp, hi = qmax - zp;
  best_scale = torch::empty({R, 1}, rows.options());
  best_zp = torch::zeros({R, 1}, rows.options());
  // Rows in chunks so a [rows, n, Z] slab stays around 1M values (cache-friendly, bounded memory).
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, n * (qmax + 1)));
  for (int64_t r0 = 0; r0 < R; r0 += chunk) {
    const int64_t r1 = std::min(R, r0 + chunk);
    auto w = rows.slice(0, r0, r1);
    auto rg = range.slice(0, r0, r1);
    auto w3 = w.unsqueeze(2);
    torch::Tensor bscore = torch::full({r1 - r0, 1}, INFINITY, rows.options());
    torch::Tensor bscale = torch::empty({r1 - r0, 1}, rows.options());
    torch::Tensor bzp = torch::zeros({r1 - r0, 1}, rows.options());
    for (int i = kAsymFractions; i >= 1; --i) {
      // i = 100 first: Δ = range * 1.0f / qmax is bit-identical to MinMax's scale, and later candidates must be
      // strictly better, so MinMax's own zero point wins ties.
      const float frac = static_cast<float>(i) / kAsymFractions;
      auto delta = (rg * frac / static_cast<double>(qmax)).clamp_min(kMinScale);  // [r,1]
      auto d3 = delta.unsqueeze(2);
      auto q0 = torch::round(w3 / d3);                                               // [r,n,1]
      auto err = (w3 - d3 * torch::clamp(q0, lo, hi)).abs_().pow_(kSearchP).sum(1);  // [r,Z]
      auto [score, arg] = err.min(1, /*keepdim=*/true);
      auto better = score < bscore;
      bscore = torch::where(better, score, bscore);
      bscale = torch::where(better, delta, bscale);
      bzp = torch::where(better, arg.to(rows.scalar_type()), bzp);
    }
    best_scale.slice(0, r0, r1).copy_(bscale);
    best_zp.slice(0, r0, r1).copy_(bzp);
  }
}

// Symmetric L2.4 shrink search (FlexRound CNN supplementary code / BRECQ): M_i = M(1-0.01i), i = 0..79, the
// grid's scale for M_i from scale_of(M_i) and its rounding from nearest(); the first candidate wins ties.
torch::Tensor shrink_search(const torch::Tensor& rows, const torch::Tensor& m,
                            const std::function<torch::Tensor(const torch::Tensor&)>& scale_of,
                            const std::function<torch::Tensor(const torch::Tensor&)>& nearest) {
  torch::Tensor bscore, bscale;
  for (int i = 0; i < kSymShrinks; ++i) {
    const float shrink = 1.0f - 0.01f * static_cast<float>(i);
    auto scale = scale_of(m * shrink).clamp_min(kMinScale);
    auto err = (rows - scale * nearest(rows / scale)).abs_().pow_(kSearchP).sum(1, true);
    if (i == 0) {
      bscore = err;
      bscale = scale;
      continue;
    }
    auto better = err < bscore;
    bscore = torch::where(better, err, bscore);
    bscale = torch::where(better, scale, bscale);
  }
  return bscale;
}

// Integers: scale 2M/(2^b-1) (see quantizer.h), codes -2^(b-1) .. 2^(b-1)-1.
torch::Tensor mse_search_sym(const torch::Tensor& rows, const torch::Tensor& m, int bits) {
  const double qmax = static_cast<double>((int64_t{1} << bits) - 1);
  const double lo = -static_cast<double>(int64_t{1} << (bits - 1)), hi = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
  return shrink_search(rows, m, [&](const torch::Tensor& t) { return t * 2.0 / qmax; },
                       [&](const torch::Tensor& r) { return torch::clamp(torch::round(r), lo, hi); });
}

// Minifloat / power grids: scale M_i / max_value, the format's nearest level.
torch::Tensor mse_search_levels(const torch::Tensor& rows, const torch::Tensor& m, const WeightLevels& lv) {
  const double vmax = lv.format().max_value();
  return shrink_search(rows, m, [&](const torch::Tensor& t) { return t / vmax; },
                       [&](const torch::Tensor& r) { return lv.nearest(r); });
}

torch::Tensor to_float(const torch::Tensor& x) { return x.to(torch::kFloat).contiguous(); }

}  // namespace

Format int_weight_format(int bits) { return Format(IntFormat{bits, false}); }

WeightLevels::WeightLevels(Format format, torch::Tensor zero_point) : format_(std::move(format)) {
  if (format_.is_int()) {
    FQ_INTERNAL_ASSERT(zero_point.defined(), "integer weight levels need a zero point");
    z_ = std::move(zero_point);
  }
}

// Minifloat / power-grid rounding runs on fp32 (the format kernels); the result returns in r's dtype. Weight
// grids saturate: r is clamped to the grid's range first, so an IEEE-like format's overflow to inf (fp8_e5m2)
// never becomes a weight.
torch::Tensor WeightLevels::saturated(const torch::Tensor& r) const {
  return to_float(r).clamp(format_.min_value(), format_.max_value());
}

torch::Tensor WeightLevels::nearest(const torch::Tensor& r) const {
  if (format_.is_int()) return torch::clamp(torch::round(r), -z_, qmax() - z_);
  return quantize(saturated(r), format_).to(r.scalar_type());
}

torch::Tensor WeightLevels::below(const torch::Tensor& r) const {
  if (format_.is_int()) return torch::floor(r);
  return quantize(saturated(r), format_, RoundingMode::Down).to(r.scalar_type());
}

torch::Tensor WeightLevels::above(const torch::Tensor& level) const {
  if (format_.is_int()) return level + 1;
  auto l = to_float(level);
  auto next = torch::nextafter(l, torch::full_like(l, INFINITY));
  return quantize(saturated(next), format_, RoundingMode::Up).to(level.scalar_type());
}

torch::Tensor WeightLevels::clamp(const torch::Tensor& level) const {
  if (format_.is_int()) return torch::clamp(level, -z_, qmax() - z_);
  return torch::clamp(level, format_.min_value(), format_.max_value());
}

torch::Tensor WeightLevels::rounds_up(const torch::Tensor& r, const torch::Tensor& lower) const {
  return (format_.is_int() ? torch::round(r) : nearest(r)) > lower;
}

torch::Tensor WeightLevels::passes(const torch::Tensor& r, const torch::Tensor& q) const {
  if (format_.is_int()) return torch::round(r) == q;
  return (r >= format_.min_value()).logical_and(r <= format_.max_value());
}

torch::Tensor WeightLevels::to_codes(const torch::Tensor& level) const {
  if (format_.is_int()) return (level + z_).to(torch::kUInt8);
  // + 0.0 turns -0 into +0: one code for zero, whichever way a method reached it (AdaRound's below + step).
  auto codes = encode(to_float(level) + 0.0, format_);
  if (format_.is_pow()) codes = codes - format_.code_min();
  return codes.to(torch::kUInt8);
}

torch::Tensor WeightLevels::from_codes(const torch::Tensor& codes) const {
  if (format_.is_int()) return codes.to(z_.scalar_type()) - z_;
  auto c = codes.to(torch::kInt);
  if (format_.is_pow()) c = c + format_.code_min();
  return decode(c, format_);
}

torch::Tensor WeightLevels::lowest() const { return format_.is_int() ? -z_ : torch::Tensor(); }
torch::Tensor WeightLevels::highest() const { return format_.is_int() ? qmax() - z_ : torch::Tensor(); }

WeightLevels weight_levels(const WeightQuantSpec& spec, const QParams& qp, at::IntArrayRef shape) {
  return WeightLevels(spec.format, spec.integer() ? expand_to_weight(qp.zero_point, shape, spec) : torch::Tensor());
}

WeightLevels grouped_levels(const WeightQuantSpec& spec, const QParams& qp) {
  return WeightLevels(spec.format, spec.integer() ? qp.zero_point : torch::Tensor());
}

std::string to_string(ScaleInit s) {
  switch (s) {
    case ScaleInit::Mse: return "mse";
    case ScaleInit::Signed: return "signed";
    default: return "minmax";
  }
}

std::string to_string(ScaleDtype s) {
  switch (s) {
    case ScaleDtype::Fp16: return "fp16";
    case ScaleDtype::KQuant: return "kquant";
    default: return "fp32";
  }
}

ScaleDtype parse_scale_dtype(const std::string& s) {
  for (ScaleDtype d : {ScaleDtype::Fp32, ScaleDtype::Fp16, ScaleDtype::KQuant})
    if (s == to_string(d)) return d;
  throw ConfigError("weight.scale_dtype \"" + s + "\" is not known -> allowed: fp32 | fp16 | kquant");
}

ScaleInit parse_scale_init(const std::string& s) {
  if (s == "mse") return ScaleInit::Mse;
  if (s == "minmax") return ScaleInit::MinMax;
  if (s == "signed") return ScaleInit::Signed;
  throw ConfigError("weight.init \"" + s + "\" is not valid -> allowed: mse | minmax | signed");
}

std::vector<int64_t> GroupLayout::param_shape(Granularity g) const {
  switch (g) {
    case Granularity::PerTensor: return {1, 1, 1};
    case Granularity::PerChannel: return {cout, 1, 1};
    case Granularity::PerGroup: return {cout, groups, 1};
  }
  return {};
}

GroupLayout group_layout(at::IntArrayRef shape, const WeightQuantSpec& spec) {
  FQ_CHECK(!shape.empty() && shape[0] > 0, ConfigError, "weight shape ", shape_str(shape),
           " cannot be quantized -> allowed: [Cout, ...] with Cout >= 1");
  GroupLayout l;
  l.cout = shape[0];
  l.k = 1;
  for (size_t i = 1; i < shape.size(); ++i) l.k *= shape[i];
  FQ_CHECK(l.k > 0, ConfigError, "weight shape ", shape_str(shape), " is empty");
  if (spec.granularity == Granularity::PerGroup) {
    FQ_CHECK(spec.group_size >= 1, ConfigError, "weight group size ", spec.group_size, " is not valid -> allowed: >= 1");
    l.group = std::min(spec.group_size, l.k);
    l.groups = (l.k + l.group - 1) / l.group;
  } else {
    l.group = l.k;
    l.groups = 1;
  }
  return l;
}

torch::Tensor to_grouped(const torch::Tensor& w, const WeightQuantSpec& spec) {
  auto l = group_layout(w.sizes(), spec);
  auto w2 = w.reshape({l.cout, l.k});
  const int64_t padded = l.groups * l.group;
  if (padded > l.k) w2 = at::constant_pad_nd(w2, {0, padded - l.k}, 0);
  return w2.reshape({l.cout, l.groups, l.group});
}

torch::Tensor from_grouped(const torch::Tensor& wg, at::IntArrayRef shape) {
  FQ_CHECK(wg.dim() == 3 && !shape.empty() && wg.size(0) == shape[0], ConfigError, "grouped tensor ",
           shape_str(wg.sizes()), " does not match weight shape ", shape_str(shape));
  int64_t k = 1;
  for (size_t i = 1; i < shape.size(); ++i) k *= shape[i];
  FQ_CHECK(wg.size(1) * wg.size(2) >= k, ConfigError, "grouped tensor ", shape_str(wg.sizes()),
           " is smaller than weight shape ", shape_str(shape));
  auto w2 = wg.reshape({wg.size(0), wg.size(1) * wg.size(2)});
  if (w2.size(1) != k) w2 = w2.narrow(1, 0, k);
  return w2.reshape(shape);
}

torch::Tensor expand_to_weight(const torch::Tensor& p, at::IntArrayRef shape, const WeightQuantSpec& spec) {
  auto l = group_layout(shape, spec);
  if (p.size(1) == 1) {  // per-tensor / per-channel: a plain broadcast over the input dims
    std::vector<int64_t> view(shape.size(), 1);
    view[0] = p.size(0);
    return p.reshape(view).expand(shape).contiguous();
  }
  auto full = p.expand({l.cout, l.groups, l.group});
  return from_grouped(full, shape).contiguous();
}

torch::Tensor reduce_to_param(const torch::Tensor& full, at::IntArrayRef param_shape, const WeightQuantSpec& spec) {
  return to_grouped(full, spec).sum_to_size(param_shape);
}

void check_weight_finite(const torch::Tensor& w, const std::string& what) {
  if (!w.is_floating_point()) return;
  auto finite = torch::isfinite(w);
  if (finite.all().item<bool>()) return;
  const int64_t n_nan = torch::isnan(w).sum().item<int64_t>();
  const int64_t n_inf = torch::isinf(w).sum().item<int64_t>();
  const int64_t first = (~finite).reshape(-1).nonzero().min().item<int64_t>();
  throw NumericError(detail::concat(what, " ", shape_str(w.sizes()), " contains ", n_nan, " NaN and ", n_inf,
                                    " inf values (first at flat index ", first,
                                    ") -> allowed: finite values only -> hint: the model file or an earlier "
                                    "step produced them; check the weights before quantizing"));
}

double lp_error(const torch::Tensor& a, const torch::Tensor& b, double p) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().pow(p).mean().item<double>();
}

namespace {

// Minifloat and power grids: symmetric, zero point 0, the largest level on max|w| (MinMax) or the L2.4 shrink.
QParams init_levels_qparams(const torch::Tensor& wg, const WeightQuantSpec& spec, const std::vector<int64_t>& pshape,
                            const std::vector<int64_t>& dims) {
  QParams qp;
  auto m = wg.abs().amax(dims, /*keepdim=*/true);
  if (spec.init == ScaleInit::MinMax) {
    qp.scale = (m / spec.format.max_value()).clamp_min(kMinScale);
  } else {
    WeightLevels lv(spec.format, torch::Tensor());
    qp.scale = mse_search_levels(search_rows(wg, spec.granularity), m.reshape({-1, 1}), lv).reshape(pshape);
  }
  qp.zero_point = torch::zeros(pshape, wg.options());
  return qp;
}

}  // namespace

void check_weight_spec(const WeightQuantSpec& spec) {
  if (spec.integer()) {
    const IntFormat& f = spec.format.as_int();
    FQ_CHECK(f.bits >= 2 && f.bits <= 8 && !f.is_signed, ConfigError, "weight format ", spec.format.name(),
             " is not supported -> allowed: uint2..uint8 (weight.bits 2..8) -> hint: set weight.bits");
  } else {
    FQ_CHECK(spec.bits() <= 8, ConfigError, "weight format ", spec.format.name(), " has ", spec.bits(),
             "-bit codes -> allowed: at most 8 bits (fp4_e2m1, fp6_e3m2, fp6_e2m3, fp8_e4m3, fp8_e5m2, pow<b>_a<x>)");
    FQ_CHECK(spec.symmetric, ConfigError, "weight format ", spec.format.name(),
             " has no zero point -> hint: set weight.symmetric=true");
  }
  // (k-quants start from llama.cpp's own search whatever the init.)
  FQ_CHECK(spec.init != ScaleInit::Signed || (spec.integer() && spec.symmetric), ConfigError,
           "weight.init=signed orients a symmetric integer grid, and this one is ", spec.format.name(),
           spec.symmetric ? " symmetric" : " asymmetric", " -> hint: set weight.symmetric=true, or use weight.init=mse | minmax");
  FQ_CHECK(spec.granularity != Granularity::PerGroup || spec.group_size >= 1, ConfigError, "weight group size ",
           spec.group_size, " is not valid -> allowed: >= 1");
  if (spec.scale_dtype == ScaleDtype::KQuant) {
    const std::string why = kquant_mismatch(spec);
    FQ_CHECK(why.empty(), ConfigError, "weight.scale_dtype=kquant: ", why);
  }
}

torch::Tensor stored_scale(const torch::Tensor& scale, const WeightQuantSpec& spec) {
  constexpr double kMinHalf = 5.9604644775390625e-08;  // 2^-24, the smallest positive half
  switch (spec.scale_dtype) {
    case ScaleDtype::Fp16: return scale.to(torch::kHalf).to(scale.scalar_type()).clamp_min(kMinHalf);
    case ScaleDtype::KQuant: return detail::kquant_project(scale, spec);
    default: return scale;
  }
}

// The initial grid before the spec's scale storage (scale_dtype) is applied.
static QParams init_qparams_unstored(const torch::Tensor& w_in, const WeightQuantSpec& spec) {
  check_weight_spec(spec);
  check_weight_finite(w_in, "weight");
  torch::NoGradGuard ng;
  auto w = w_in.detach().to(torch::kFloat);
  auto l = group_layout(w.sizes(), spec);
  auto wg = to_grouped(w, spec);
  const auto pshape = l.param_shape(spec.granularity);
  const auto dims = reduce_dims(spec.granularity);
  if (spec.scale_dtype == ScaleDtype::KQuant) {
    const std::string why = kquant_mismatch(spec, l.k);
    FQ_CHECK(why.empty(), ConfigError, "weight ", shape_str(w.sizes()), ": ", why,
             " -> hint: keep this layer in a wider type (GGUF export falls back to f16) or use weight.scale_dtype=fp16");
    return detail::kquant_init(w, spec);
  }
  if (!spec.integer()) return init_levels_qparams(wg, spec, pshape, dims);
  const int bits = spec.bits();
  const int64_t qmax = (int64_t{1} << bits) - 1;

  QParams qp;
  if (spec.symmetric) {
    auto m = wg.abs().amax(dims, /*keepdim=*/true);  // param shape
    const double half = static_cast<double>(int64_t{1} << (bits - 1));
    if (spec.init == ScaleInit::Signed) {  // the larger side gets the extra level (ggml's d = max / -2^(b-1))
      qp.scale = (m / half).clamp_min(kMinScale);
      const auto positive = wg.amax(dims, true) > -wg.amin(dims, true);
      qp.zero_point = torch::where(positive, torch::full_like(m, half - 1), torch::full_like(m, half));
      return qp;
    }
    if (spec.init == ScaleInit::MinMax) {
      qp.scale = (m * 2.0 / static_cast<double>(qmax)).clamp_min(kMinScale);
    } else {
      auto rows = search_rows(wg, spec.granularity);
      qp.scale = mse_search_sym(rows, m.reshape({-1, 1}), bits).reshape(pshape);
    }
    qp.zero_point = torch::full(pshape, static_cast<float>(int64_t{1} << (bits - 1)), w.options());
    return qp;
  }
  auto mn = wg.amin(dims, true).clamp_max(0);
  auto mx = wg.amax(dims, true).clamp_min(0);
  if (spec.init == ScaleInit::MinMax) {
    qp.scale = ((mx - mn) / static_cast<double>(qmax)).clamp_min(kMinScale);
    qp.zero_point = torch::clamp(-torch::round(mn / qp.scale), 0, static_cast<double>(qmax));
    return qp;
  }
  auto rows = search_rows(wg, spec.granularity);
  torch::Tensor scale, zp;
  mse_search_asym(rows, mn.reshape({-1, 1}), mx.reshape({-1, 1}), qmax, scale, zp);
  qp.scale = scale.reshape(pshape).contiguous();
  qp.zero_point = zp.reshape(pshape).contiguous();
  return qp;
}

QParams init_qparams(const torch::Tensor& w, const WeightQuantSpec& spec) {
  QParams qp = init_qparams_unstored(w, spec);
  qp.scale = stored_scale(qp.scale, spec);
  if (has_fp16_min(spec)) {  // the zero point as a half minimum: value = scale * q - offset, q in [0, 2^b-1]
    qp.offset = (qp.scale * qp.zero_point).to(torch::kHalf).to(torch::kFloat);
    qp.zero_point = torch::zeros_like(qp.zero_point);
  }
  return qp;
}

torch::Tensor fake_quant_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) {
  check_weight_finite(w, "weight");
  auto wg = to_grouped(w.to(torch::kFloat), spec);
  if (qp.offset.defined()) wg = wg + qp.offset;
  auto q = grouped_levels(spec, qp).nearest(wg / qp.scale);
  auto v = qp.scale * q;
  return from_grouped(qp.offset.defined() ? v - qp.offset : v, w.sizes());
}

QuantizedTensor quantize_rtn(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) {
  check_weight_finite(w, "weight");
  torch::NoGradGuard ng;
  auto wg = to_grouped(w.detach().to(torch::kFloat), spec);
  if (qp.offset.defined()) wg = wg + qp.offset;
  const auto lv = grouped_levels(spec, qp);
  QuantizedTensor t;
  t.codes = lv.to_codes(lv.nearest(wg / qp.scale));
  t.qparams = qp;
  t.shape = w.sizes().vec();
  t.spec = spec;
  return t;
}

torch::Tensor QuantizedTensor::dequantize() const {
  auto v = qparams.scale * grouped_levels(spec, qparams).from_codes(codes).to(qparams.scale.scalar_type());
  auto w = from_grouped(qparams.offset.defined() ? v - qparams.offset : v, shape);
  for (const QuantizedTensor& t : terms) w = w + t.dequantize();
  return w;
}

double QuantizedTensor::code_bits_per_weight() const {
  double b = spec.bits();
  for (const QuantizedTensor& t : terms)
    b += t.spec.bits() * (t.qparams.scale.reshape({t.qparams.scale.size(0), -1}).amax(1) > 0).to(torch::kDouble)
                             .mean().item<double>();
  return b;
}

}  // namespace flexquant
