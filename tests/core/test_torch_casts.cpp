// fp16 and bf16 quantize results must equal LibTorch's own casts, x.to(kHalf).to(kFloat) and
// x.to(kBFloat16).to(kFloat), bit for bit (NaN payloads aside: LibTorch itself gives different NaN bits for
// bf16 on its vector and scalar paths).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "format_test_util.h"

using namespace flexquant;
using flexquant::testing::bits_of;
using flexquant::testing::float_of;
using flexquant::testing::hex;

namespace {

// Inputs: boundary values of both formats (every level, every midpoint and their fp32 neighbours, overflow
// thresholds, fp32 subnormals) followed by n random fp32 bit patterns (all classes: NaN, inf, +-0, subnormal).
torch::Tensor cast_inputs(int64_t n_random) {
  std::vector<float> v;
  for (const char* name : {"fp16", "bf16"}) {
    const auto lv = levels(Format::parse(name));
    for (size_t k = 0; k < lv.size(); ++k) {
      const float l = float(lv[k]);
      v.push_back(l);
      if (k + 1 < lv.size()) {
        const float mid = float((lv[k] + lv[k + 1]) / 2);
        v.insert(v.end(), {mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY)});
      }
    }
  }
  for (float s : {1.0f, -1.0f})
    for (float a : {65504.0f, 65519.0f, 65520.0f, 65536.0f, 0x1.fcp127f, 0x1.fdp127f, 0x1.fep127f, 0x1.fffffep127f,
                    0x1p-149f, 0x1p-134f, 0x1p-133f, 0x1.8p-134f, 0x1p-25f, 0x1.8p-25f, 0x1p-24f, 0x1.8p-24f,
                    INFINITY, NAN, 0.0f})
      v.push_back(s * a);
  torch::Tensor r = torch::randint(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                                   {n_random}, torch::TensorOptions().dtype(torch::kInt));
  return torch::cat({torch::tensor(v), r.view(torch::kFloat)});
}

int64_t compare(const torch::Tensor& x, const torch::Tensor& ours, const torch::Tensor& theirs, const char* what) {
  const torch::Tensor both_nan = ours.isnan() & theirs.isnan();
  const torch::Tensor equal = (ours.view(torch::kInt) == theirs.view(torch::kInt)) | both_nan;
  const int64_t bad = (~equal).sum().item<int64_t>();
  if (bad) {
    const int64_t i = (~equal).nonzero()[0][0].item<int64_t>();
    ADD_FAILURE() << what << ": " << bad << " mismatches; first x " << hex(x[i].item<float>()) << " ours "
                  << hex(ours[i].item<float>()) << " torch " << hex(theirs[i].item<float>());
  }
  return x.numel();
}

}  // namespace

TEST(TorchCasts, Fp16AndBf16BitIdentical) {
  torch::manual_seed(1234);
  const int64_t n_random = 10'000'000;
  const torch::Tensor x = cast_inputs(n_random);
  ASSERT_GT(x.numel(), n_random + 300000);
  // The random patterns cover every class.
  const torch::Tensor tail = x.narrow(0, x.numel() - n_random, n_random);
  EXPECT_GT(tail.isnan().sum().item<int64_t>(), 10000);
  EXPECT_GT((tail.abs() < 0x1p-126f).sum().item<int64_t>(), 10000);  // fp32 subnormals and zeros
  int64_t checked = 0;
  checked += compare(x, quantize(x, Format::parse("fp16")), x.to(torch::kHalf).to(torch::kFloat), "fp16");
  checked += compare(x, quantize(x, Format::parse("bf16")), x.to(torch::kBFloat16).to(torch::kFloat), "bf16");
  // +-0 and +-inf exactly (not just as a class).
  const torch::Tensor z = torch::tensor({0.0f, -0.0f, INFINITY, -INFINITY});
  for (const char* f : {"fp16", "bf16"})
    EXPECT_TRUE(torch::equal(quantize(z, Format::parse(f)).view(torch::kInt), z.view(torch::kInt)));
  EXPECT_EQ(checked, 2 * x.numel());
  std::printf("[ checked  ] %lld values against torch's fp16 and bf16 casts\n", (long long)checked);
}
