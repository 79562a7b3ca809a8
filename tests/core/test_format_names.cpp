// Format names (parse / name round trip, errors that list the valid names), preset properties, and the
// saturation / inf / NaN / subnormal policy of format.h checked value by value.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "format_test_util.h"
#include "reference/format_ref.h"

using namespace flexquant;
using flexquant::testing::hex;
using flexquant::testing::same;

TEST(FormatNames, ParseNameRoundTrip) {
  int n = 0;
  for (const auto& p : Format::presets()) {
    const Format f = Format::parse(p.first);
    EXPECT_EQ(Format::parse(f.name()), f) << p.first;
    ++n;
  }
  for (const auto& f : flexquant::testing::small_formats()) {
    EXPECT_EQ(Format::parse(f.name()), f) << f.name();
    ++n;
  }
  for (const char* name : {"int4", "int4_r", "uint8", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp16", "bf16", "sbits10",
                           "fp8_e4m3_b10_nosub", "fp6_e3m2_ieee", "fp8_e5m2_fn", "pow4_a0.5", "pow6_a1.25",
                           "pow3_a0.5_full", "fp7_e3m3_b-2", "fp8_e4m3_sat", "fp8_e5m2_b14", "fp12_e8m3_b130"}) {
    EXPECT_EQ(Format::parse(name).name(), name);
    ++n;
  }
  // Aliases resolve to the canonical (preset) name.
  EXPECT_EQ(Format::parse("fp8_e4m3_fn").name(), "fp8_e4m3");
  EXPECT_EQ(Format::parse("fp8_e5m2_ieee").name(), "fp8_e5m2");
  EXPECT_EQ(Format::parse("fp16_e5m10_ieee").name(), "fp16");
  EXPECT_EQ(Format::parse("fp4_e2m1_sat").name(), "fp4_e2m1");
  EXPECT_EQ(Format::parse("sbits7").name(), "bf16");
  EXPECT_EQ(Format::parse("sbits23").name(), "sbits23");
  EXPECT_GE(n, 290);
  EXPECT_EQ(Format::parse("fp12_e8m3_ieee").name(), "sbits3");
  EXPECT_EQ(Format::parse("fp8_e4m3_sat").max_value(), 480);
}

TEST(FormatNames, UnknownNamesListValidOnes) {
  int n = 0;
  for (const char* bad : {"int17", "int1", "uint4_r", "fp8_e4m4", "fp8_e4m3_xyz", "fp8_e4m3_ieee_fn", "sbits24",
                          "pow4_a-1", "pow4_ax", "pow4_a2_ful", "fp9_e9m0", "float8", "", "int", "fp17_e8m8", "fp8_e0m7"}) {
    try {
      Format::parse(bad);
      ADD_FAILURE() << "\"" << bad << "\" parsed";
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("fp8_e4m3"), std::string::npos) << msg;
      EXPECT_NE(msg.find("pow<b>_a<x>"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("\"") + bad + "\""), std::string::npos) << msg;
      ++n;
    }
  }
  EXPECT_EQ(n, 16);
  EXPECT_THROW(parse_rounding_mode("nearest"), ConfigError);
  try {
    parse_rounding_mode("round");
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("nearest_even, nearest_away, toward_zero, up, down, stochastic"),
              std::string::npos);
  }
  for (const auto& m : rounding_mode_names()) EXPECT_EQ(rounding_mode_name(parse_rounding_mode(m)), m);
}

TEST(FormatNames, PresetProperties) {
  struct Row {
    const char* name;
    double max, min_normal, min_sub;
    int64_t levels;
  };
  const Row rows[] = {
      {"fp8_e4m3", 448, 0x1p-6, 0x1p-9, 253},      // 256 codes - 2 NaN - (-0)
      {"fp8_e5m2", 57344, 0x1p-14, 0x1p-16, 247},  // 256 - 2*(1 inf + 3 NaN) - (-0)
      {"fp6_e3m2", 28, 0x1p-2, 0x1p-4, 63},
      {"fp6_e2m3", 7.5, 1, 0.125, 63},
      {"fp4_e2m1", 6, 1, 0.5, 15},
      {"fp16", 65504, 0x1p-14, 0x1p-24, 63487},
      {"bf16", 0x1.fep127, 0x1p-126, 0x1p-133, 65279},
      {"sbits23", std::numeric_limits<float>::max(), 0x1p-126, 0x1p-149, 4278190079},
      {"sbits0", 0x1p127, 0x1p-126, 0x1p-126, 509},
      {"int4", 7, 1, 1, 16},
      {"int4_r", 7, 1, 1, 15},
      {"uint8", 255, 1, 1, 256},
      {"pow4_a2", 49, 1, 1, 15},
      {"pow4_a2_full", 49, 1, 1, 16},
  };
  for (const auto& r : rows) {
    const Format f = Format::parse(r.name);
    EXPECT_EQ(f.max_value(), r.max) << r.name;
    EXPECT_EQ(f.min_normal(), r.min_normal) << r.name;
    EXPECT_EQ(f.min_subnormal(), r.min_sub) << r.name;
    EXPECT_EQ(f.num_levels(), r.levels) << r.name;
  }
  EXPECT_EQ(Format::parse("fp8_e4m3_b10_nosub").min_subnormal(), 0x1p-9);
  // min_value: -max except integers' and _full power grids' one extra negative level.
  EXPECT_EQ(Format::parse("pow4_a2_full").min_value(), -64);
  EXPECT_EQ(Format::parse("pow4_a2").min_value(), -49);
  EXPECT_EQ(Format::parse("int4").min_value(), -8);
  EXPECT_EQ(Format::parse("fp4_e2m1").min_value(), -6);
  EXPECT_EQ(Format::parse("pow3_a1_full").code_min(), -4);
  EXPECT_FALSE(Format::parse("fp4_e2m1").has_nan());
  EXPECT_TRUE(Format::parse("fp8_e4m3").has_nan());
  EXPECT_FALSE(Format::parse("fp8_e4m3").has_inf());
  EXPECT_TRUE(Format::parse("fp8_e5m2").has_inf());
  EXPECT_FALSE(Format::parse("sbits0").has_nan());
  const auto lv = levels(Format::parse("fp4_e2m1"));
  EXPECT_EQ(lv, (std::vector<double>{-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6}));
  EXPECT_THROW(levels(Format::parse("sbits23")), ConfigError);
}

// Values beyond the grid, inf, NaN and fp32 subnormals, for every preset and mode, against the reference and
// against the policy written in format.h.
TEST(FormatPolicy, SaturationInfNanSubnormal) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  int64_t checked = 0;
  for (const auto& p : Format::presets()) {
    const Format f = Format::parse(p.first);
    SCOPED_TRACE(f.name());
    const ref::Quantizer R(f);
    const float mx = float(f.max_value());
    std::vector<float> xs = {inf, std::numeric_limits<float>::max(), 1e30f, mx * 2, std::nextafter(mx, inf),
                             mx * 1.03f, 0x1p-149f, 0x1p-140f, 1e-40f, 0x1.8p-127f, 1e-30f, 0.0f,
                             float(f.min_subnormal()) * 0.5f, float(f.min_subnormal()) * 0.75f, nan};
    const size_t npos = xs.size();
    for (size_t i = 0; i < npos; ++i) xs.push_back(-xs[i]);
    const torch::Tensor x = torch::tensor(xs);
    const bool saturating = !f.has_inf();
    for (RoundingMode mode : flexquant::testing::all_modes()) {
      const torch::Tensor q = quantize(x, f, mode, 3);
      for (size_t i = 0; i < xs.size(); ++i) {
        const float got = q[i].item<float>();
        const float want = R(xs[i], 1.0f, 0, mode, ref::uniform(3, i));
        ASSERT_TRUE(same(got, want)) << rounding_mode_name(mode) << " x " << hex(xs[i]) << " got " << hex(got)
                                     << " reference " << hex(want);
        const float lowest = f.is_int() ? float(f.code_min()) : -mx;
        if (std::isnan(xs[i])) {
          ASSERT_TRUE(std::isnan(got));
        } else if (std::isinf(xs[i])) {
          ASSERT_EQ(got, saturating ? (xs[i] > 0 ? mx : lowest) : xs[i]);
        }
        if (saturating && !std::isnan(xs[i])) {
          ASSERT_TRUE(got <= mx && got >= lowest);
        }
        ++checked;
      }
    }
    // encode(NaN): the NaN code where there is one, else NumericError
    const torch::Tensor xn = torch::tensor({nan});
    if (f.has_nan()) {
      const int64_t c = encode(xn, f).item<int>();
      EXPECT_TRUE(std::isnan(decode(torch::tensor({c}), f).item<float>()));
    } else {
      EXPECT_THROW(encode(xn, f), NumericError);
    }
  }
  EXPECT_EQ(checked, int64_t(Format::presets().size()) * 6 * 30);
  // IEEE overflow by mode, fp16: 65520 = max + half a step is the first value that rounds to inf.
  const Format h = Format::parse("fp16");
  const torch::Tensor x = torch::tensor({65519.0f, 65520.0f, 1e6f, -1e6f});
  EXPECT_TRUE(torch::equal(quantize(x, h, RoundingMode::NearestEven), torch::tensor({65504.0f, inf, inf, -inf})));
  EXPECT_TRUE(torch::equal(quantize(x, h, RoundingMode::TowardZero), torch::tensor({65504.0f, 65504.0f, 65504.0f, -65504.0f})));
  EXPECT_TRUE(torch::equal(quantize(x, h, RoundingMode::Up), torch::tensor({inf, inf, inf, -65504.0f})));
  EXPECT_TRUE(torch::equal(quantize(x, h, RoundingMode::Down), torch::tensor({65504.0f, 65504.0f, 65504.0f, -inf})));
  // Saturating E4M3: 464 (a tie towards the NaN code's 480) and beyond all give 448.
  const Format e4 = Format::parse("fp8_e4m3");
  for (RoundingMode mode : flexquant::testing::all_modes())
    EXPECT_TRUE(torch::equal(quantize(torch::tensor({464.0f, 479.0f, 500.0f, -1e9f}), e4, mode),
                             torch::tensor({448.0f, 448.0f, 448.0f, -448.0f})));
  // Zero: minifloats keep -0, integers and power grids have one zero.
  EXPECT_TRUE(std::signbit(quantize(torch::tensor({-0.0f}), e4).item<float>()));
  EXPECT_TRUE(std::signbit(quantize(torch::tensor({-1e-9f}), e4).item<float>()));
  EXPECT_FALSE(std::signbit(quantize(torch::tensor({-0.3f}), Format::parse("int4")).item<float>()));
  EXPECT_FALSE(std::signbit(quantize(torch::tensor({-0.3f}), Format::parse("pow4_a2")).item<float>()));
  // No subnormals: below 2^-6 the E4M3 grid is {0, 2^-6}.
  const Format ns = Format::parse("fp8_e4m3_nosub");
  EXPECT_TRUE(torch::equal(quantize(torch::tensor({0x1p-7f, 0x1.01p-7f, 0x1p-9f}), ns),
                           torch::tensor({0.0f, 0x1p-6f, 0.0f})));
}

TEST(FormatPolicy, DecodeRejectsBadCodes) {
  EXPECT_THROW(decode(torch::tensor({8}), Format::parse("int4")), NumericError);
  EXPECT_THROW(decode(torch::tensor({-8}), Format::parse("int4_r")), NumericError);
  EXPECT_THROW(decode(torch::tensor({256}), Format::parse("fp8_e4m3")), NumericError);
  EXPECT_THROW(decode(torch::tensor({1.0f}), Format::parse("fp8_e4m3")), ConfigError);
  EXPECT_THROW(quantize(torch::tensor({1.0}, torch::kDouble), Format::parse("fp8_e4m3")), ConfigError);
  // sbits23 codes are the fp32 bits themselves, negative int32 included.
  const torch::Tensor x = torch::tensor({-1.5f, 3.25f, -0.0f});
  const Format s23 = Format::parse("sbits23");
  EXPECT_TRUE(torch::equal(encode(x, s23), x.view(torch::kInt)));
  EXPECT_TRUE(torch::equal(decode(encode(x, s23), s23).view(torch::kInt), x.view(torch::kInt)));
}
