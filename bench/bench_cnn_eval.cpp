// FP32 evaluation of the real CIFAR-10 ResNet-20/32/44 (../shared/data/cifar10) on all 10,000 test
// images: top-1 (README's independent figures 81.03 / 82.56 / 82.67 %) and wall time per full pass.
// Run from the repository root: ./build/bench_cnn_eval [--benchmark_filter=resnet20]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/runtime.h"

namespace {

std::string shared_dir() {
  const char* env = std::getenv("FLEXQUANT_SHARED");
  return (std::filesystem::path(env ? env : "../shared") / "data/cifar10").string();
}

const flexquant::ImageDataset& test_set() {
  static const flexquant::ImageDataset d = flexquant::load_cifar10(shared_dir());
  return d;
}

void BM_FpEval(benchmark::State& state, const std::string& model) {
  const auto& data = test_set();
  auto m = flexquant::load_image_classifier(shared_dir() + "/" + model + ".safetensors", "resnet_cifar");
  flexquant::EvalResult r;
  for (auto _ : state) r = flexquant::evaluate_classifier(*m, data.images, data.labels, state.range(0));
  state.counters["top1_pct"] = r.top1;
  state.counters["images"] = static_cast<double>(r.count);
  state.counters["images_per_s"] = benchmark::Counter(static_cast<double>(r.count), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK_CAPTURE(BM_FpEval, resnet20, std::string("resnet20"))->Arg(256)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_FpEval, resnet32, std::string("resnet32"))->Arg(256)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_FpEval, resnet44, std::string("resnet44"))->Arg(256)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

int main(int argc, char** argv) {
  flexquant::init_runtime();
  flexquant::set_log_level(flexquant::LogLevel::Warn);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
