// Quantize throughput (GB/s of fp32 read + fp32 written) on a 64 MiB tensor, beside a plain copy measured in
// the same run. Goal: round-to-nearest at >= 50 % of the copy bandwidth. bench/run_bench_quantize.sh runs
// this and writes the table into docs/RESULTS.md.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstring>

#include "flexquant/format.h"
#include "flexquant/quantizer.h"
#include "flexquant/rounder.h"
#include "flexquant/runtime.h"

namespace {
using namespace flexquant;

constexpr int64_t kRows = 4096, kCols = 4096;  // 16 Mi floats = 64 MiB
constexpr double kBytes = 2.0 * kRows * kCols * sizeof(float);

struct Data {
  torch::Tensor x, y;
  ScaleParams per_channel_int4, unit;
  Data() {
    torch::manual_seed(0);
    x = torch::randn({kRows, kCols});
    y = torch::empty_like(x);
    per_channel_int4 = minmax_scale_params(x, Format::parse("int4"), Granularity::PerChannel);
    unit = ScaleParams::per_tensor(1.0f);
    y.copy_(x);  // touch the output pages once
  }
};
Data& data() {
  static Data d;
  return d;
}

void finish(benchmark::State& st) {
  st.SetBytesProcessed(int64_t(st.iterations() * kBytes));
  st.counters["threads"] = at::get_num_threads();
}

void BM_CopyMemcpy(benchmark::State& st) {
  auto& d = data();
  for (auto _ : st) {
    std::memcpy(d.y.data_ptr<float>(), d.x.data_ptr<float>(), size_t(kRows * kCols) * sizeof(float));
    benchmark::ClobberMemory();
  }
  finish(st);
}

void BM_CopyAtCopy(benchmark::State& st) {  // at::copy_: parallel over the intra-op threads
  auto& d = data();
  for (auto _ : st) {
    d.y.copy_(d.x);
    benchmark::ClobberMemory();
  }
  finish(st);
}

void run_quantize(benchmark::State& st, const char* fmt, const ScaleParams& qp, RoundingMode mode) {
  auto& d = data();
  const Format f = Format::parse(fmt);
  for (auto _ : st) {
    quantize_out(d.y, d.x, f, qp, mode, 1);
    benchmark::ClobberMemory();
  }
  finish(st);
}

void BM_Int4PerChannel_NearestEven(benchmark::State& st) {
  run_quantize(st, "int4", data().per_channel_int4, RoundingMode::NearestEven);
}
void BM_Fp8E4M3_NearestEven(benchmark::State& st) {
  run_quantize(st, "fp8_e4m3", data().unit, RoundingMode::NearestEven);
}
void BM_Int4PerChannel_Stochastic(benchmark::State& st) {
  run_quantize(st, "int4", data().per_channel_int4, RoundingMode::Stochastic);
}
void BM_Fp8E4M3_Stochastic(benchmark::State& st) {
  run_quantize(st, "fp8_e4m3", data().unit, RoundingMode::Stochastic);
}
// The allocating API: a fresh 64 MiB result per call (page faults included), beside clone() which does the same.
void BM_CopyClone(benchmark::State& st) {
  auto& d = data();
  for (auto _ : st) benchmark::DoNotOptimize(d.x.clone());
  finish(st);
}
void BM_Fp8E4M3_NearestEven_Alloc(benchmark::State& st) {
  auto& d = data();
  const Format f = Format::parse("fp8_e4m3");
  for (auto _ : st) benchmark::DoNotOptimize(quantize(d.x, f));
  finish(st);
}

// The engine's path: a weight grid (WeightQuantSpec) through WeightLevels, as every rounder and GPTQ round.
// These allocate their result, so they compare with clone() above.
WeightQuantSpec engine_spec(const char* fmt, bool symmetric) {
  WeightQuantSpec s;
  s.format = std::string(fmt) == "int" ? int_weight_format(4) : Format::parse(fmt);
  s.symmetric = symmetric;
  s.granularity = Granularity::PerChannel;
  s.init = ScaleInit::MinMax;
  return s;
}
void run_engine_rtn(benchmark::State& st, const WeightQuantSpec& spec) {
  auto& d = data();
  const QParams qp = init_qparams(d.x, spec);
  for (auto _ : st) benchmark::DoNotOptimize(fake_quant_rtn(d.x, spec, qp));
  finish(st);
}
void BM_Engine_RtnUint4PerChannel(benchmark::State& st) { run_engine_rtn(st, engine_spec("int", false)); }
void BM_Engine_RtnFp4E2M1PerChannel(benchmark::State& st) { run_engine_rtn(st, engine_spec("fp4_e2m1", true)); }
void BM_Engine_FlexRoundFp4E2M1Forward(benchmark::State& st) {
  auto& d = data();
  const auto spec = engine_spec("fp4_e2m1", true);
  auto r = make_rounder("flexround");
  r->init(d.x, spec, init_qparams(d.x, spec));
  torch::NoGradGuard ng;
  for (auto _ : st) benchmark::DoNotOptimize(r->forward(true));
  finish(st);
}

BENCHMARK(BM_CopyMemcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CopyAtCopy)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Int4PerChannel_NearestEven)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Fp8E4M3_NearestEven)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Int4PerChannel_Stochastic)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Fp8E4M3_Stochastic)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CopyClone)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Fp8E4M3_NearestEven_Alloc)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Engine_RtnUint4PerChannel)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Engine_RtnFp4E2M1PerChannel)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Engine_FlexRoundFp4E2M1Forward)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  flexquant::init_runtime();
  flexquant::set_log_level(flexquant::LogLevel::Warn);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
