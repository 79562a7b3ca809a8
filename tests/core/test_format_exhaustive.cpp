// Exhaustive tests over every code of every format up to 16 bits (style.md §7.1): decode against the textbook
// reference, encode(decode(c)) == c, a strictly increasing grid with the level count of the formula, every
// midpoint and its two float neighbours rounded per mode (ties to even explicit), saturation and subnormals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <map>

#include "format_test_util.h"
#include "reference/format_ref.h"

using namespace flexquant;
using flexquant::testing::hex;
using flexquant::testing::same;

namespace {

// Level count from the format fields, written out independently of Format::num_levels().
int64_t expected_levels(const Format& f) {
  if (f.is_int()) {
    const auto& i = f.as_int();
    if (!i.is_signed) return int64_t(1) << i.bits;
    return (int64_t(1) << i.bits) - (i.restricted ? 1 : 0);
  }
  if (f.is_pow()) return (int64_t(1) << f.as_pow().bits) - (f.as_pow().full ? 0 : 1);
  const auto& m = f.as_float();
  const int64_t mant = int64_t(1) << m.man_bits, fields = int64_t(1) << m.exp_bits;
  int64_t positive_normals = (fields - 1) * mant;  // exponent fields 1 .. 2^E-1
  if (m.specials == FloatSpecials::Ieee) positive_normals -= mant;  // inf + NaNs
  if (m.specials == FloatSpecials::NanOnly) positive_normals -= 1;  // the one NaN
  const int64_t positive_subnormals = m.subnormals ? mant - 1 : 0;
  return 2 * (positive_normals + positive_subnormals) + 1;
}

torch::Tensor all_codes(const Format& f) { return torch::arange(f.code_min(), f.code_max() + 1, torch::kLong); }

// Whether code c is the canonical code of its value (encode gives it back).
bool canonical(const Format& f, int64_t c, double v) {
  if (std::isnan(v)) return false;
  if (!f.is_float()) return true;
  const auto& m = f.as_float();
  const int64_t mant = c & ((int64_t(1) << m.man_bits) - 1), field = (c >> m.man_bits) & ((1 << m.exp_bits) - 1);
  return m.subnormals || field != 0 || mant == 0;
}

struct Counts {
  int64_t formats = 0, codes = 0, roundtrips = 0, midpoints = 0, exact_midpoints = 0, points = 0;
};

void check_format(const Format& f, Counts& n) {
  SCOPED_TRACE("format " + f.name());
  const ref::Quantizer R(f);
  // ---- decode vs reference, every code
  const torch::Tensor codes = all_codes(f);
  const torch::Tensor dec = decode(codes, f);
  const int64_t ncodes = codes.numel();
  ASSERT_EQ(ncodes, f.code_max() - f.code_min() + 1);
  const int64_t* cp = codes.data_ptr<int64_t>();
  const float* dp = dec.data_ptr<float>();
  std::vector<int64_t> canon_codes;
  std::map<double, int64_t> level_code;  // value -> canonical code (+0 preferred for zero)
  for (int64_t i = 0; i < ncodes; ++i) {
    const double r = R.decode(cp[i]);
    ASSERT_TRUE(same(dp[i], float(r))) << "code " << cp[i] << ": decode " << hex(dp[i]) << " reference " << r;
    if (canonical(f, cp[i], r)) {
      canon_codes.push_back(cp[i]);
      if (std::isfinite(r) && !(r == 0 && std::signbit(r))) level_code.emplace(r, cp[i]);
    }
  }
  n.codes += ncodes;

  // ---- encode(decode(c)) == c and every mode leaves levels unchanged
  const torch::Tensor cc = torch::tensor(canon_codes, torch::kLong);
  const torch::Tensor vals = decode(cc, f);
  for (RoundingMode mode : flexquant::testing::all_modes()) {
    const torch::Tensor back = encode(vals, f, mode, 7).to(torch::kLong);
    const torch::Tensor q = quantize(vals, f, mode, 7);
    ASSERT_TRUE(torch::equal(back, cc)) << "encode(decode(c)) != c in mode " << rounding_mode_name(mode)
                                        << "; first bad code "
                                        << cc.masked_select(back != cc).index({0}).item<int64_t>();
    ASSERT_TRUE(torch::equal(q.view(torch::kInt), vals.view(torch::kInt)))
        << "a level moved under " << rounding_mode_name(mode);
  }
  n.roundtrips += int64_t(canon_codes.size());

  // ---- the grid: strictly increasing, count from the formula, equal to levels()
  std::vector<double> grid;
  for (const auto& kv : level_code) grid.push_back(kv.first);
  ASSERT_EQ(int64_t(grid.size()), expected_levels(f));
  ASSERT_EQ(int64_t(grid.size()), f.num_levels());
  const auto lib_levels = levels(f);
  ASSERT_EQ(lib_levels, grid);  // std::map is ordered; equality with the strictly increasing library list
  for (size_t k = 1; k < lib_levels.size(); ++k) ASSERT_LT(lib_levels[k - 1], lib_levels[k]);
  ASSERT_EQ(grid.back(), f.max_value());
  ASSERT_EQ(grid.front(), f.min_value());
  // Written out: integers start at their lowest code, _full power grids at -(2^(b-1))^x, the rest mirror max.
  const double lowest = f.is_int() ? double(f.code_min())
                        : f.is_pow() && f.as_pow().full
                            ? -double(float(std::pow(double(int64_t(1) << (f.bits() - 1)), f.as_pow().exponent)))
                            : -f.max_value();
  ASSERT_EQ(grid.front(), lowest);
  ASSERT_EQ(*std::upper_bound(grid.begin(), grid.end(), 0.0), f.min_subnormal());

  // ---- midpoints and their float neighbours
  std::vector<float> pts;
  std::vector<size_t> lower;  // index k of the lower neighbour
  std::vector<int> kind;      // 0 below the midpoint, 1 at it, 2 above it
  for (size_t k = 0; k + 1 < grid.size(); ++k) {
    const double mid = (grid[k] + grid[k + 1]) / 2;
    float fm = float(mid);
    std::vector<std::pair<float, int>> here;
    if (double(fm) == mid) {
      here = {{std::nextafter(fm, -INFINITY), 0}, {fm, 1}, {std::nextafter(fm, INFINITY), 2}};
      ++n.exact_midpoints;
    } else {
      // Power-grid midpoints need more than 24 bits: no float is a tie, test the two floats around it.
      ASSERT_TRUE(f.is_pow()) << "midpoint of " << grid[k] << " and " << grid[k + 1] << " is not an fp32 number";
      if (double(fm) > mid) fm = std::nextafter(fm, -INFINITY);
      here = {{fm, 0}, {std::nextafter(fm, INFINITY), 2}};
    }
    for (auto [p, kd] : here) {
      pts.push_back(p);
      lower.push_back(k);
      kind.push_back(kd);
    }
  }
  n.midpoints += int64_t(grid.size()) - 1;
  const torch::Tensor x = torch::from_blob(pts.data(), {int64_t(pts.size())}, torch::kFloat).clone();
  for (RoundingMode mode : flexquant::testing::all_modes()) {
    SCOPED_TRACE("mode " + rounding_mode_name(mode));
    const uint64_t seed = 11;
    const torch::Tensor q = quantize(x, f, mode, seed);
    const float* qp = q.data_ptr<float>();
    for (size_t i = 0; i < pts.size(); ++i) {
      const double lo = grid[lower[i]], hi = grid[lower[i] + 1];
      const float refv = R(pts[i], 1.0f, 0, mode, ref::uniform(seed, i));
      ASSERT_TRUE(same(qp[i], refv)) << "x " << hex(pts[i]) << " -> " << hex(qp[i]) << ", reference " << hex(refv);
      const double got = qp[i];
      ASSERT_TRUE(got == lo || got == hi) << "x " << hex(pts[i]) << " left its interval [" << lo << ", " << hi << "]";
      const bool neg = lo + hi < 0;  // the interval's side of zero (the midpoint's sign)
      const double small = neg ? hi : lo, big = neg ? lo : hi;  // by magnitude
      double want = got;
      switch (mode) {
        case RoundingMode::NearestEven:
          if (kind[i] == 0) want = lo;
          else if (kind[i] == 2) want = hi;
          else if (f.is_float() && f.as_float().man_bits == 0 && small != 0)
            want = big;  // significand q = 1 is odd: the tie goes to the next power of two
          else if (level_code.at(lo) % 2 == 0 && level_code.at(hi) % 2 == 0)
            want = small;  // 0 against 2^emin without subnormals: q = 0 against q = 1
          else
            want = (level_code.at(lo) % 2 == 0) ? lo : hi;  // the even code
          break;
        case RoundingMode::NearestAway: want = kind[i] == 0 ? lo : kind[i] == 2 ? hi : big; break;
        case RoundingMode::TowardZero: want = small; break;
        case RoundingMode::Up: want = hi; break;
        case RoundingMode::Down: want = lo; break;
        case RoundingMode::Stochastic: break;
      }
      ASSERT_EQ(got, want) << "x " << hex(pts[i]) << " between " << lo << " and " << hi;
    }
    n.points += int64_t(pts.size());
  }
  ++n.formats;
}

}  // namespace

TEST(FormatExhaustive, EveryCodeEveryMidpoint) {
  Counts n;
  const auto formats = flexquant::testing::small_formats();
  for (const auto& f : formats) {
    check_format(f, n);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // Counted, so a loop that silently runs zero times fails.
  EXPECT_EQ(n.formats, int64_t(formats.size()));
  EXPECT_GE(n.formats, 200);
  EXPECT_GT(n.codes, 1000000);
  EXPECT_GT(n.midpoints, 900000);
  EXPECT_EQ(n.points, 6 * (2 * n.midpoints + n.exact_midpoints));
  EXPECT_GT(n.exact_midpoints, 800000);
  std::printf("[ checked  ] %lld formats, %lld codes, %lld round trips, %lld midpoints (%lld exact ties), %lld rounded points\n",
              (long long)n.formats, (long long)n.codes, (long long)n.roundtrips, (long long)n.midpoints, (long long)n.exact_midpoints,
              (long long)n.points);
}
