// The fused causal attention against its ATen reference (forward + backward), at stories260K's reconstruction
// shape (batch 4, 8 query heads over 4 kv heads, 256 tokens, head width 8) and at a wider head.
//   ./build/bench_attention [--benchmark_filter=...]   (threads: FLEXQUANT_THREADS, default all cores)
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "flexquant/attention.h"
#include "flexquant/runtime.h"

namespace {

void BM_Attention(benchmark::State& state, bool fused, int64_t hd) {
  torch::manual_seed(0);
  const int64_t B = 4, H = 8, Hkv = 4, T = 256;
  auto q = torch::randn({B, H, T, hd}).requires_grad_(true), k = torch::randn({B, Hkv, T, hd}).requires_grad_(true);
  auto v = torch::randn({B, Hkv, T, hd}).requires_grad_(true);
  auto g = torch::randn({B, H, T, hd});
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (auto _ : state) {
    auto o = fused ? flexquant::causal_attention(q, k, v, scale) : flexquant::causal_attention_reference(q, k, v, scale);
    o.backward(g);
    q.mutable_grad().reset(), k.mutable_grad().reset(), v.mutable_grad().reset();
  }
}

}  // namespace

BENCHMARK_CAPTURE(BM_Attention, fused_hd8, true, 8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, reference_hd8, false, 8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, fused_hd16, true, 16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, reference_hd16, false, 16)->Unit(benchmark::kMillisecond)->UseRealTime();
// hd 64 runs the reference path in causal_attention itself (kMaxFusedHead); here both are the reference.
BENCHMARK_CAPTURE(BM_Attention, api_hd64, true, 64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, reference_hd64, false, 64)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  flexquant::init_runtime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
