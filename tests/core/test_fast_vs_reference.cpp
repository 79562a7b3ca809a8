// The fast paths (src/formats/ops.cpp) against the slow textbook reference (tests/reference/format_ref.h),
// element by element and bit for bit, on random tensors: every format kind, every rounding mode, every
// granularity, with and without zero points, encode and decode included.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "format_test_util.h"
#include "reference/format_ref.h"

using namespace flexquant;
using flexquant::testing::hex;
using flexquant::testing::same;

namespace {

// Random inputs with all the awkward classes mixed in: a wide log-uniform spread, exact ties of the integer
// grid (k + 0.5), zeros, huge values, inf and NaN.
torch::Tensor random_input(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor x = torch::randn(shape) * torch::exp(torch::randn(shape) * 2);
  auto flat = x.view(-1);
  const int64_t n = flat.numel();
  for (int64_t i = 0; i < n; i += 17) flat[i] = float((i % 23) - 11) * 0.5f;
  if (n > 40) {
    flat[3] = INFINITY;
    flat[5] = -INFINITY;
    flat[7] = 0.0f;
    flat[9] = -0.0f;
    flat[11] = 1e30f;
    flat[13] = 1e-42f;
  }
  return x;
}

int64_t check(const Format& f, const torch::Tensor& x, const ScaleParams* qp, RoundingMode mode, uint64_t seed) {
  const ref::Quantizer R(f);
  const torch::Tensor y = qp ? quantize(x, f, *qp, mode, seed) : quantize(x, f, mode, seed);
  // Per-element scale and zero point, spelled out from the ScaleParams layout.
  const int64_t n = x.numel(), C = x.size(0), K = n / C;
  torch::Tensor s_el = torch::ones({n}), z_el = torch::zeros({n}, torch::kInt);
  if (qp) {
    const torch::Tensor idx = torch::arange(n);
    torch::Tensor p;
    if (qp->granularity == Granularity::PerTensor) p = torch::zeros({n}, torch::kLong);
    if (qp->granularity == Granularity::PerChannel) p = idx.div(K, "floor");
    if (qp->granularity == Granularity::PerGroup) {
      const int64_t G = (K + qp->group_size - 1) / qp->group_size;
      p = idx.div(K, "floor") * G + (idx % K).div(qp->group_size, "floor");
    }
    s_el = qp->scale.reshape(-1).index({p}).contiguous();
    if (qp->zero_point.defined()) z_el = qp->zero_point.reshape(-1).index({p}).to(torch::kInt).contiguous();
  }
  const float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* sp = s_el.data_ptr<float>();
  const int32_t* zp = z_el.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const float want = R(xp[i], sp[i], zp[i], mode, ref::uniform(seed, uint64_t(i)));
    if (!same(yp[i], want)) {
      ADD_FAILURE() << f.name() << " " << rounding_mode_name(mode) << " element " << i << " x " << hex(xp[i])
                    << " scale " << sp[i] << " zp " << zp[i] << ": fast " << hex(yp[i]) << " reference " << hex(want);
      return 0;
    }
  }
  // encode then decode gives the same values (NaN-free copy for formats without a NaN code).
  const torch::Tensor xc = f.has_nan() ? x : x.nan_to_num(0.0, INFINITY, -INFINITY);
  const torch::Tensor yc = qp ? quantize(xc, f, *qp, mode, seed) : quantize(xc, f, mode, seed);
  const torch::Tensor codes = qp ? encode(xc, f, *qp, mode, seed) : encode(xc, f, mode, seed);
  const torch::Tensor back = qp ? decode(codes, f, *qp) : decode(codes, f);
  const torch::Tensor eq = (back.view(torch::kInt) == yc.view(torch::kInt)) | (back.isnan() & yc.isnan());
  EXPECT_TRUE(eq.all().item<bool>()) << f.name() << " " << rounding_mode_name(mode) << ": decode(encode) != quantize";
  return n;
}

}  // namespace

TEST(FastVsReference, UnitScaleEveryFormatEveryMode) {
  std::vector<Format> formats;
  for (const auto& p : Format::presets()) formats.push_back(Format::parse(p.first));
  for (const char* n : {"fp8_e4m3_nosub", "fp6_e3m2_ieee_b2", "fp5_e2m2_fn", "fp13_e8m4_b135", "pow8_a0.7",
                        "pow3_a0.6_full", "pow5_a3", "uint3", "int12_r", "fp3_e1m1", "fp9_e8m0_fn"})
    formats.push_back(Format::parse(n));
  const torch::Tensor x = random_input({20000}, 1);
  int64_t checked = 0;
  for (const auto& f : formats)
    for (RoundingMode mode : flexquant::testing::all_modes()) checked += check(f, x, nullptr, mode, 1000 + checked);
  EXPECT_EQ(checked, int64_t(formats.size()) * 6 * 20000);
}

TEST(FastVsReference, ScaledEveryGranularity) {
  const torch::Tensor x = random_input({24, 5, 9}, 2);  // K = 45: groups of 16 leave a partial group of 13
  int64_t checked = 0, configs = 0;
  for (const char* name : {"int4", "uint4", "int8_r", "int3", "fp8_e4m3", "fp4_e2m1", "fp8_e5m2", "pow4_a0.5"}) {
    const Format f = Format::parse(name);
    for (Granularity g : {Granularity::PerTensor, Granularity::PerChannel, Granularity::PerGroup})
      for (bool symmetric : {true, false}) {
        if (!symmetric && !f.is_int()) continue;
        const torch::Tensor finite = x.nan_to_num(0, 1e3, -1e3).clamp(-1e3, 1e3);
        const ScaleParams qp = minmax_scale_params(finite, f, g, 16, symmetric);
        if (!symmetric) {
          ASSERT_TRUE(qp.zero_point.defined());
        }
        for (RoundingMode mode : flexquant::testing::all_modes()) checked += check(f, x, &qp, mode, 7 + checked);
        ++configs;
      }
  }
  EXPECT_EQ(configs, 8 * 3 + 4 * 3);
  EXPECT_EQ(checked, configs * 6 * x.numel());
}

TEST(FastVsReference, QParamsValidation) {
  const torch::Tensor x = torch::randn({4, 10});
  const Format f = Format::parse("int4");
  ScaleParams bad;
  bad.granularity = Granularity::PerChannel;
  bad.scale = torch::ones({3});
  EXPECT_THROW(quantize(x, f, bad), ConfigError);
  bad.scale = torch::tensor({1.0f, 0.0f, 1.0f, 1.0f});
  EXPECT_THROW(quantize(x, f, bad), NumericError);
  bad.scale = torch::ones({4});
  bad.zero_point = torch::full({4}, 9, torch::kInt);
  EXPECT_THROW(quantize(x, f, bad), ConfigError);
  bad.zero_point = torch::full({4}, 1, torch::kInt);
  EXPECT_THROW(quantize(x, Format::parse("fp8_e4m3"), bad), ConfigError);
  bad.granularity = Granularity::PerGroup;
  bad.group_size = 0;
  EXPECT_THROW(quantize(x, f, bad), ConfigError);
  // An all-zero channel gets scale 1, never NaN.
  const ScaleParams qp = minmax_scale_params(torch::zeros({2, 8}), f, Granularity::PerChannel);
  EXPECT_TRUE(torch::equal(qp.scale, torch::ones({2})));
  EXPECT_THROW(encode(torch::tensor({NAN}), f), NumericError);
}
