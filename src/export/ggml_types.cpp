// ggml block types: llama.cpp's reference quantizer, dequantization, and packing of flexquant codes.
#include "flexquant/ggml_types.h"

#include <c10/util/Half.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "flexquant/error.h"
#include "../formats/ggml_kquants.h"

namespace flexquant {
namespace {

uint16_t to_half_bits(float v) { return c10::Half(v).x; }
float from_half_bits(uint16_t b) { return static_cast<float>(c10::Half(b, c10::Half::from_bits())); }

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
uint16_t get_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

constexpr int64_t kQK = 32;

// Block layouts (bytes): Q4_0 d|qs[16]; Q4_1 d|m|qs[16]; Q5_0 d|qh[4]|qs[16]; Q5_1 d|m|qh[4]|qs[16]; Q8_0 d|qs[32].
// Nibbles: byte j holds element j (low) and element j+16 (high); qh bit j holds bit 4 of element j.
struct Layout {
  int bits;
  bool has_min;
};
Layout layout(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return {4, false};
    case GgmlType::Q4_1: return {4, true};
    case GgmlType::Q5_0: return {5, false};
    case GgmlType::Q5_1: return {5, true};
    case GgmlType::Q8_0: return {8, false};
    default: return {0, false};
  }
}

// Writes one block from its scale, min and codes (0..2^b-1 for the 4/5-bit types; int8 + 128 for Q8_0).
void write_block(GgmlType t, uint8_t* out, uint16_t d, uint16_t m, const uint8_t* code) {
  const Layout l = layout(t);
  put_u16(out, d);
  uint8_t* p = out + 2;
  if (l.has_min) put_u16(p, m), p += 2;
  if (l.bits == 8) {
    for (int j = 0; j < kQK; ++j) p[j] = static_cast<uint8_t>(static_cast<int>(code[j]) - 128);
    return;
  }
  if (l.bits == 5) {
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) qh |= static_cast<uint32_t>((code[j] >> 4) & 1u) << j;
    std::memcpy(p, &qh, 4);
    p += 4;
  }
  for (int j = 0; j < kQK / 2; ++j) p[j] = static_cast<uint8_t>((code[j] & 0x0F) | ((code[j + kQK / 2] & 0x0F) << 4));
}

// Codes (same convention as write_block), d and m of one block.
void read_block(GgmlType t, const uint8_t* in, float& d, float& m, int* q) {
  const Layout l = layout(t);
  d = from_half_bits(get_u16(in));
  const uint8_t* p = in + 2;
  m = 0;
  if (l.has_min) m = from_half_bits(get_u16(p)), p += 2;
  if (l.bits == 8) {
    for (int j = 0; j < kQK; ++j) q[j] = static_cast<int8_t>(p[j]);
    return;
  }
  uint32_t qh = 0;
  if (l.bits == 5) std::memcpy(&qh, p, 4), p += 4;
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = (p[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    q[j + kQK / 2] = (p[j] >> 4) | static_cast<int>(((qh >> (j + kQK / 2)) & 1u) << 4);
  }
  if (!l.has_min) {
    const int z = 1 << (l.bits - 1);
    for (int j = 0; j < kQK; ++j) q[j] -= z;
  }
}

// llama.cpp's reference rounding of one block into codes (0..2^b-1; Q8_0 as int8 + 128), d and m.
void quantize_block_ref(GgmlType t, const float* x, uint16_t& d_bits, uint16_t& m_bits, uint8_t* code) {
  const Layout l = layout(t);
  if (l.has_min) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
    const float d = (mx - mn) / static_cast<float>((1 << l.bits) - 1);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    d_bits = to_half_bits(d);
    m_bits = to_half_bits(mn);
    const int top = (1 << l.bits) - 1;
    for (int j = 0; j < kQK; ++j) {
      const float v = (x[j] - mn) * id + 0.5f;
      int c = l.bits == 4 ? std::min(top, static_cast<int>(static_cast<int8_t>(v))) : static_cast<int>(static_cast<uint8_t>(v));
      code[j] = static_cast<uint8_t>(c);
    }
    return;
  }
  m_bits = 0;
  if (l.bits == 8) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    d_bits = to_half_bits(d);
    for (int j = 0; j < kQK; ++j) code[j] = static_cast<uint8_t>(static_cast<int>(std::round(x[j] * id)) + 128);
    return;
  }
  // Q4_0 / Q5_0: the signed value of largest magnitude maps to the most negative code.
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  const int z = 1 << (l.bits - 1);
  const float d = max / static_cast<float>(-z);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  d_bits = to_half_bits(d);
  const float half_up = static_cast<float>(z) + 0.5f;
  for (int j = 0; j < kQK; ++j)
    code[j] = static_cast<uint8_t>(std::min(2 * z - 1, static_cast<int>(static_cast<int8_t>(x[j] * id + half_up))));
}

void check_row(GgmlType t, int64_t n, const char* who) {
  const auto& info = ggml_type_info(t);
  FQ_CHECK(n > 0 && n % info.block == 0, ConfigError, who, ": rows of ", n, " weights do not fit ", info.name,
           " blocks of ", info.block, " -> allowed: a multiple of ", info.block, "; hint: use f16 or f32 for this tensor");
}

}  // namespace

const std::vector<GgmlTypeInfo>& ggml_types() {
  static const std::vector<GgmlTypeInfo> types = {
      {GgmlType::F32, "f32", 1, 4},       {GgmlType::F16, "f16", 1, 2},       {GgmlType::Q4_0, "q4_0", 32, 18},
      {GgmlType::Q4_1, "q4_1", 32, 20},   {GgmlType::Q5_0, "q5_0", 32, 22},   {GgmlType::Q5_1, "q5_1", 32, 24},
      {GgmlType::Q8_0, "q8_0", 32, 34},   {GgmlType::Q2_K, "q2_k", 256, 84},  {GgmlType::Q3_K, "q3_k", 256, 110},
      {GgmlType::Q4_K, "q4_k", 256, 144}, {GgmlType::Q5_K, "q5_k", 256, 176}, {GgmlType::Q6_K, "q6_k", 256, 210},
  };
  return types;
}

const GgmlTypeInfo& ggml_type_info(GgmlType t) {
  for (const auto& i : ggml_types())
    if (i.type == t) return i;
  throw InternalError(fmt::format("ggml type id {} has no entry", static_cast<uint32_t>(t)));
}

namespace {
std::string type_list() {
  std::string s;
  for (const auto& i : ggml_types()) s += (s.empty() ? "" : " | ") + std::string(i.name);
  return s;
}
}  // namespace

GgmlType parse_ggml_type(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& i : ggml_types())
    if (lower == i.name) return i.type;
  throw ConfigError("GGUF tensor type \"" + name + "\" is not supported -> allowed: " + type_list());
}

GgmlType ggml_type_from_id(uint32_t id, const std::string& origin) {
  for (const auto& i : ggml_types())
    if (static_cast<uint32_t>(i.type) == id) return i.type;
  std::string ids;
  for (const auto& i : ggml_types()) ids += fmt::format("{}{} ({})", ids.empty() ? "" : ", ", static_cast<uint32_t>(i.type), i.name);
  throw IoError(fmt::format("{}: tensor type id {} is not supported -> supported: {}", origin, id, ids));
}

int64_t ggml_row_bytes(GgmlType t, int64_t n) {
  const auto& i = ggml_type_info(t);
  return n / i.block * i.block_bytes;
}

std::vector<uint8_t> ggml_quantize_ref(GgmlType t, const float* x, int64_t rows, int64_t n) {
  check_row(t, n, "ggml_quantize_ref");
  std::vector<uint8_t> out(static_cast<size_t>(rows * ggml_row_bytes(t, n)));
  uint8_t* p = out.data();
  if (t == GgmlType::F32) {
    std::memcpy(p, x, out.size());
    return out;
  }
  if (t == GgmlType::F16) {
    for (int64_t i = 0; i < rows * n; ++i) put_u16(p + 2 * i, to_half_bits(x[i]));
    return out;
  }
  const int64_t bytes = ggml_type_info(t).block_bytes;
  if (const kquant::KSpec* ks = kquant::kspec(t)) {
    for (int64_t b = 0; b < rows * n / kquant::kSuper; ++b, p += bytes)
      kquant::pack(*ks, kquant::quantize_ref(*ks, x + b * kquant::kSuper), p);
    return out;
  }
  uint8_t code[kQK];
  for (int64_t b = 0; b < rows * n / kQK; ++b, p += bytes) {
    uint16_t d, m;
    quantize_block_ref(t, x + b * kQK, d, m, code);
    write_block(t, p, d, m, code);
  }
  return out;
}

namespace {

// One 32-weight block with importances (quantize_row_*_impl): sigma2 is the row's mean square.
void quantize_block_imatrix(GgmlType t, const float* x, const float* qw, float sigma2, uint8_t* out) {
  const Layout l = layout(t);
  float weight[kQK];
  int L[kQK];
  for (int j = 0; j < kQK; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
  uint16_t d_bits, m_bits = 0;
  if (l.has_min) {
    float min;
    d_bits = to_half_bits(kquant::qkx3_search(kQK, (1 << l.bits) - 1, x, weight, L, &min));
    m_bits = to_half_bits(-min);
  } else {
    d_bits = to_half_bits(kquant::qx_search(kQK, 1 << (l.bits - 1), x, L, weight));
  }
  uint8_t code[kQK];
  for (int j = 0; j < kQK; ++j) code[j] = static_cast<uint8_t>(L[j]);
  write_block(t, out, d_bits, m_bits, code);
}

}  // namespace

std::vector<uint8_t> ggml_quantize(GgmlType t, const float* x, int64_t rows, int64_t n, const float* imatrix) {
  if (!imatrix || t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::Q8_0)  // Q8_0 ignores one
    return ggml_quantize_ref(t, x, rows, n);
  check_row(t, n, "ggml_quantize");
  const auto& info = ggml_type_info(t);
  std::vector<uint8_t> out(static_cast<size_t>(rows * ggml_row_bytes(t, n)));
  const kquant::KSpec* ks = kquant::kspec(t);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    uint8_t* o = out.data() + r * ggml_row_bytes(t, n);
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += xr[j] * xr[j];
    for (int64_t b = 0; b < n / info.block; ++b) {
      const int64_t at = b * info.block;
      if (ks) kquant::pack(*ks, kquant::quantize_imatrix(*ks, xr + at, imatrix + at), o + b * info.block_bytes);
      else quantize_block_imatrix(t, xr + at, imatrix + at, sum_x2 / static_cast<float>(n), o + b * info.block_bytes);
    }
  }
  return out;
}

std::vector<float> ggml_dequantize(GgmlType t, const uint8_t* data, int64_t rows, int64_t n) {
  check_row(t, n, "ggml_dequantize");
  std::vector<float> out(static_cast<size_t>(rows * n));
  if (t == GgmlType::F32) {
    std::memcpy(out.data(), data, out.size() * 4);
    return out;
  }
  if (t == GgmlType::F16) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = from_half_bits(get_u16(data + 2 * i));
    return out;
  }
  const int64_t bytes = ggml_type_info(t).block_bytes;
  if (const kquant::KSpec* ks = kquant::kspec(t)) {
    for (int64_t b = 0; b < rows * n / kquant::kSuper; ++b)
      kquant::dequantize(*ks, kquant::unpack(*ks, data + b * bytes), out.data() + b * kquant::kSuper);
    return out;
  }
  const bool has_min = layout(t).has_min;
  int q[kQK];
  for (int64_t b = 0; b < rows * n / kQK; ++b) {
    float d, m;
    read_block(t, data + b * bytes, d, m, q);
    for (int j = 0; j < kQK; ++j) {
      const float v = static_cast<float>(q[j]) * d;
      out[b * kQK + j] = has_min ? v + m : v;
    }
  }
  return out;
}

std::optional<WeightQuantSpec> ggml_weight_spec(GgmlType t) {
  WeightQuantSpec s;
  s.granularity = Granularity::PerGroup;
  if (const kquant::KSpec* ks = kquant::kspec(t)) {
    s.format = int_weight_format(ks->bits);
    s.symmetric = !ks->has_min;
    s.group_size = ks->sub;
    s.scale_dtype = ScaleDtype::KQuant;
    return s;
  }
  const Layout l = layout(t);
  if (l.bits == 0) return std::nullopt;
  s.format = int_weight_format(l.bits);
  s.symmetric = !l.has_min;  // Q4_1/Q5_1: the asymmetric fp16 grid, whose minimum is a half (has_fp16_min)
  s.group_size = kQK;
  s.scale_dtype = ScaleDtype::Fp16;
  return s;
}

std::string ggml_spec_mismatch(GgmlType t, const WeightQuantSpec& s) {
  const auto spec = ggml_weight_spec(t);
  const std::string tn = ggml_type_info(t).name;
  if (!spec) return tn + " has no flexquant grid: export it from FP weights";
  if (!s.integer() || s.bits() != spec->bits())
    return fmt::format("the weight is on {} but {} needs {}", s.format.name(), tn, spec->format.name());
  if (s.symmetric != spec->symmetric)
    return fmt::format("{} is {}: quantize with weight.symmetric={}", tn, spec->symmetric ? "symmetric" : "asymmetric (mins)",
                       spec->symmetric ? "true" : "false");
  if (s.granularity != Granularity::PerGroup || s.group_size != spec->group_size)
    return fmt::format("{} needs one scale per {} weights: quantize with weight.granularity=group weight.group_size={}", tn,
                       spec->group_size, spec->group_size);
  if (s.scale_dtype != spec->scale_dtype)
    return fmt::format("{} stores {} scales: quantize with weight.scale_dtype={}", tn, to_string(spec->scale_dtype),
                       to_string(spec->scale_dtype));
  return "";
}

std::string ggml_grid_mismatch(GgmlType t, const QuantizedTensor& q) {
  if (!q.terms.empty())
    return fmt::format("it is a multipoint sum of {} grids and a GGUF tensor holds one: quantize with a single-grid "
                       "method (rtn, flexround, gptq, ...), or keep the .fqz", q.terms.size() + 1);
  std::string why = ggml_spec_mismatch(t, q.spec);
  if (!why.empty()) return why;
  const auto& info = ggml_type_info(t);
  const std::string tn = info.name;
  // The spec caps the group at the row length: a row shorter than a group has one shorter group, no block.
  if (q.codes.size(2) != q.spec.group_size || (q.codes.size(1) * q.codes.size(2)) % info.block != 0)
    return fmt::format("{} needs rows of whole {}-weight blocks: use f16 or f32 for this tensor", tn, info.block);
  if (!torch::equal(stored_scale(q.qparams.scale, q.spec), q.qparams.scale))
    return tn + " stores " + to_string(q.spec.scale_dtype) + " scales, and these scales are not all on that grid";
  if (layout(t).has_min) {
    const torch::Tensor& o = q.qparams.offset;
    if (!o.defined() || !torch::equal(o.to(torch::kHalf).to(o.scalar_type()), o) || q.qparams.zero_point.any().item<bool>())
      return tn + " stores a half minimum per block, and this grid's zero points are not one (init_qparams sets it)";
  } else if (!kquant::kspec(t)) {
    const double zq = static_cast<double>(int64_t{1} << (q.spec.bits() - 1));
    const torch::Tensor& z = q.qparams.zero_point;
    if (!(z.eq(zq) | z.eq(zq - 1)).all().item<bool>())
      return fmt::format("{} blocks hold levels -{} .. {} times a signed scale, so every zero point must be {} or {} "
                         "(weight.symmetric=true sets them)", tn, zq, zq - 1, zq, zq - 1);
  }
  return "";
}

namespace {

// A symmetric grid whose zero point is zq - 1 (levels -(zq-1)..zq) is ggml's negative-scale orientation: the same
// values are -d times the ggml code 2 zq - 1 - code.
uint8_t flip_code(int zq, uint8_t code) { return static_cast<uint8_t>(2 * zq - 1 - code); }

// One super-block of k-quant codes from flexquant's grid (scales already projected: d * integer; offsets
// dmin * integer; symmetric zero points zq or zq - 1, the orientation of a signed scale). Sets `ok` false when a
// value is not on the type's grid.
kquant::KBlock kblock_from_grid(const kquant::KSpec& ks, const float* scale, const float* zero, const float* offset,
                                const uint8_t* code, bool& ok) {
  kquant::KBlock b;
  const int top = ks.has_min ? ks.scale_hi : -ks.scale_lo;
  const int n = ks.subs();
  int arg = 0;
  for (int j = 1; j < n; ++j)
    if (scale[j] > scale[arg]) arg = j;
  const float d = std::max(from_half_bits(to_half_bits(scale[arg] / static_cast<float>(top))), 5.9604644775390625e-08f);
  // Symmetric types: d's sign puts the largest group at the negative end (-32 / -128), as ggml does.
  const bool arg_flipped = !ks.has_min && zero[arg] != static_cast<float>(ks.zq);
  b.d = ks.has_min || arg_flipped ? d : -d;
  float mo = 0;
  for (int j = 0; j < n; ++j) mo = std::max(mo, ks.has_min ? offset[j] : 0.f);
  b.dmin = mo / static_cast<float>(top);
  for (int j = 0; j < n; ++j) {
    const bool flipped = !ks.has_min && zero[j] != static_cast<float>(ks.zq);
    const float mag = std::nearbyint(scale[j] / d);
    // Symmetric: a group oriented like the largest one shares its negative sub-scale.
    const bool negative = !ks.has_min && flipped == arg_flipped;
    b.sc[j] = static_cast<int>(negative ? -mag : mag);
    if (ks.has_min) b.m[j] = b.dmin > 0 ? static_cast<int>(std::nearbyint(offset[j] / b.dmin)) : 0;
    ok = ok && b.sc[j] >= ks.scale_lo && b.sc[j] <= ks.scale_hi && b.m[j] >= 0 && b.m[j] <= ks.scale_hi;
    for (int i = j * ks.sub; i < (j + 1) * ks.sub; ++i)
      b.q[i] = flipped ? flip_code(ks.zq, code[i]) : code[i];
  }
  return b;
}

}  // namespace

std::vector<uint8_t> ggml_pack(GgmlType t, const QuantizedTensor& q, const std::string& what) {
  const std::string why = ggml_grid_mismatch(t, q);
  FQ_CHECK(why.empty(), ConfigError, what, " cannot be written as ", ggml_type_info(t).name, ": ", why);
  torch::Tensor want = q.dequantize().to(torch::kCPU, torch::kFloat).contiguous().reshape({-1});
  const int64_t rows = q.shape.at(0);
  const int64_t n = q.codes.numel() / rows;
  const int64_t block = ggml_type_info(t).block;
  FQ_CHECK(n * rows == want.numel(), ConfigError, what, ": rows of ", want.numel() / rows,
           " weights do not fill whole blocks of ", block, " -> hint: use f32 for this tensor");
  torch::Tensor codes = q.codes.to(torch::kCPU).contiguous();
  auto flat = [](const torch::Tensor& p) { return p.to(torch::kCPU, torch::kFloat).contiguous(); };
  torch::Tensor scale = flat(q.qparams.scale), zero = flat(q.qparams.zero_point);
  torch::Tensor offset = q.qparams.offset.defined() ? flat(q.qparams.offset) : torch::zeros_like(scale);
  std::vector<uint8_t> out(static_cast<size_t>(rows * ggml_row_bytes(t, n)));
  const int64_t bytes = ggml_type_info(t).block_bytes;
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* sc = scale.data_ptr<float>();
  if (const kquant::KSpec* ks = kquant::kspec(t)) {
    bool ok = true;
    for (int64_t b = 0; b < rows * n / block; ++b) {
      const int64_t g = b * ks->subs();
      kquant::pack(*ks, kblock_from_grid(*ks, sc + g, zero.data_ptr<float>() + g, offset.data_ptr<float>() + g, c + b * block, ok),
                   out.data() + b * bytes);
    }
    FQ_CHECK(ok, InternalError, what, ": its scales or offsets are not integer multiples of one super-scale (", ggml_type_info(t).name, ")");
  } else {
    const float* off = offset.data_ptr<float>();  // Q4_1/Q5_1: m = -offset (0 for the others, and unused)
    const float* zp = zero.data_ptr<float>();
    const int zq = layout(t).has_min ? 0 : 1 << (layout(t).bits - 1);
    uint8_t flipped[kQK];
    for (int64_t b = 0; b < rows * n / kQK; ++b) {
      const uint8_t* cb = c + b * kQK;
      float d = sc[b];
      if (zq && zp[b] == static_cast<float>(zq - 1)) {
        for (int j = 0; j < kQK; ++j) flipped[j] = flip_code(zq, cb[j]);
        cb = flipped, d = -d;
      }
      write_block(t, out.data() + b * bytes, to_half_bits(d), to_half_bits(-off[b]), cb);
    }
  }
  // Equal as numbers (a symmetric k-quant's negative scale writes -0 where flexquant holds +0).
  auto back = ggml_dequantize(t, out.data(), rows, n);
  FQ_CHECK(std::equal(back.begin(), back.end(), want.data_ptr<float>()), InternalError, what, ": packed ",
           ggml_type_info(t).name, " blocks do not dequantize to the evaluated weights bit for bit");
  return out;
}

}  // namespace flexquant
