// Stochastic rounding (Paxton et al. 2022, methods.md §9.1): unbiased, P(up) equal to the fractional distance,
// and reproducible from (seed, element index) alone: the same bits at 1 and 2 threads and under any chunking.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "format_test_util.h"

using namespace flexquant;

namespace {
constexpr int64_t kN = 1'000'000;

struct Case {
  const char* format;
  float x;  // a value between two levels
};
}  // namespace

// For x between levels a < b, SR gives b with probability p = (x - a)/(b - a): the number of "up" results is
// Binomial(N, p), so both the count and the mean error must sit within 5 sigma.
TEST(Stochastic, UnbiasedAndProportional) {
  const Case cases[] = {{"fp8_e4m3", 1.3f}, {"fp8_e4m3", -0.0123f}, {"fp4_e2m1", 2.2f}, {"fp4_e2m1", 5.9f},
                        {"int4", 0.1f},     {"int4", -3.75f},       {"bf16", 1.0f + 0x1p-10f},
                        {"sbits3", 100.3f}, {"pow4_a2", 30.0f},     {"fp16", 0x1.8p-25f}};
  int64_t samples = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.format) + " x=" + std::to_string(c.x));
    const Format f = Format::parse(c.format);
    const torch::Tensor x = torch::full({kN}, c.x);
    const torch::Tensor q = quantize(x, f, RoundingMode::Stochastic, 42);
    const double lo = quantize(x.narrow(0, 0, 1), f, RoundingMode::Down).item<float>();
    const double hi = quantize(x.narrow(0, 0, 1), f, RoundingMode::Up).item<float>();
    ASSERT_LT(lo, hi);
    const double p = (double(c.x) - lo) / (hi - lo);
    const int64_t n_hi = (q == float(hi)).sum().item<int64_t>(), n_lo = (q == float(lo)).sum().item<int64_t>();
    ASSERT_EQ(n_hi + n_lo, kN) << "some results are neither neighbour";
    const double sigma_count = std::sqrt(kN * p * (1 - p));
    EXPECT_LE(std::fabs(n_hi - kN * p), 5 * sigma_count) << "P(up) " << double(n_hi) / kN << " vs " << p;
    const double mean_err = (q.to(torch::kDouble) - double(c.x)).mean().item<double>();
    const double sigma_mean = (hi - lo) * std::sqrt(p * (1 - p) / kN);
    EXPECT_LE(std::fabs(mean_err), 5 * sigma_mean) << "mean error " << mean_err;
    samples += kN;
  }
  // Random values spread over many intervals: mean error of fp8_e4m3 SR within 5 sigma of 0.
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({kN}) * 3;
  const Format f = Format::parse("fp8_e4m3");
  const torch::Tensor lo = quantize(x, f, RoundingMode::Down), hi = quantize(x, f, RoundingMode::Up);
  const torch::Tensor err = (quantize(x, f, RoundingMode::Stochastic, 9) - x).to(torch::kDouble);
  const torch::Tensor p = ((x - lo) / (hi - lo)).nan_to_num(0).to(torch::kDouble);
  const double sigma = std::sqrt(((hi - lo).to(torch::kDouble).pow(2) * p * (1 - p)).sum().item<double>()) / kN;
  EXPECT_LE(std::fabs(err.mean().item<double>()), 5 * sigma);
  samples += kN;
  EXPECT_EQ(samples, 11 * kN);
}

TEST(Stochastic, ReproducibleAcrossThreadsAndChunks) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({300'003});  // odd size: uneven chunks
  const int saved = at::get_num_threads();
  int64_t compared = 0;
  for (const char* name : {"fp8_e4m3", "int4", "pow4_a0.5", "bf16"}) {
    const Format f = Format::parse(name);
    const ScaleParams qp = minmax_scale_params(x, f, Granularity::PerTensor);
    at::set_num_threads(1);
    const torch::Tensor a = quantize(x, f, qp, RoundingMode::Stochastic, 77);
    at::set_num_threads(2);
    const torch::Tensor b = quantize(x, f, qp, RoundingMode::Stochastic, 77);
    EXPECT_TRUE(torch::equal(a.view(torch::kInt), b.view(torch::kInt))) << name << ": 1 vs 2 threads";
    // Different chunking: per-group parameters that all equal the per-tensor scale split the loop into
    // segments of 7 elements (and per-channel into rows of 3): the draws must not notice.
    ScaleParams groups;
    groups.granularity = Granularity::PerGroup;
    groups.group_size = 7;
    groups.scale = qp.scale.expand({3, (100'001 + 6) / 7}).contiguous();
    const torch::Tensor c = quantize(x.view({3, -1}), f, groups, RoundingMode::Stochastic, 77).view(-1);
    EXPECT_TRUE(torch::equal(a.view(torch::kInt), c.view(torch::kInt))) << name << ": groups of 7";
    ScaleParams rows;
    rows.granularity = Granularity::PerChannel;
    rows.scale = qp.scale.expand({100'001}).contiguous();
    const torch::Tensor r = quantize(x.view({-1, 3}), f, rows, RoundingMode::Stochastic, 77).view(-1);
    EXPECT_TRUE(torch::equal(a.view(torch::kInt), r.view(torch::kInt))) << name << ": rows of 3";
    const torch::Tensor codes = encode(x, f, qp, RoundingMode::Stochastic, 77);
    EXPECT_TRUE(torch::equal(decode(codes, f, qp).view(torch::kInt), a.view(torch::kInt))) << name << ": encode";
    const torch::Tensor d = quantize(x, f, qp, RoundingMode::Stochastic, 78);
    EXPECT_GT((d != a).sum().item<int64_t>(), x.numel() / 100) << name << ": seeds 77 and 78 agree";
    compared += 5 * x.numel();
  }
  at::set_num_threads(saved);
  EXPECT_EQ(compared, 4 * 5 * 300'003);
}
