// Per-step cost model of block reconstruction (issue #12): for every unit of ResNet-20 (W4A4 FlexRound, the CNN
// table's setting) and of stories260K (W4 FlexRound, the LM table's), the FLOPs of one reconstruction step, the
// engine's measured ms/step at each thread count, and the fraction of the same run's measured sgemm peak.
//
//   bench_step [--threads 1,2] [--iters 200] [--reps 3] [--models resnet20,stories260k] [--profile trace.json]
//
// The ms/step is the engine's own (quantize() on the real model and data, UnitReport::ms_per_iter: Adam steps only,
// setup excluded), the median over --reps runs; the runs alternate thread counts so that drift in the machine's
// speed (a shared VM moves by 20 % between runs) reaches every column alike. FLOPs per step count the layers' GEMMs (forward, weight gradient, and input gradient for every
// layer but a unit's first, whose input needs none) plus, for the language model, the attention score and value
// matmuls (same three passes); elementwise work (rounders, activation quantizers, norms) is not counted.
// Output: one markdown table per model on stdout, one line per thread count with the sgemm peak first.
#include <fmt/format.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>

#include "flexquant/llama.h"
#include "flexquant/pipeline.h"
#include "flexquant/runtime.h"

using namespace flexquant;

namespace {

std::string shared_dir() {
  const char* env = std::getenv("FLEXQUANT_SHARED");
  return env ? env : "../shared";
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

// Best GFLOP/s of `fn` (which does `flop` FLOPs) over 6 timed calls after a warm-up.
double best_rate(const std::function<void()>& fn, double flop) {
  double best = 0;
  for (int rep = 0; rep < 7; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) best = std::max(best, flop / s / 1e9);
  }
  return best;
}

// The machine's GEMM peak as this LibTorch reaches it at the current thread count: the better of a large sgemm
// (torch::mm, OpenBLAS) and the same-size GEMM as a 1x1 convolution (oneDNN, which may use wider vectors).
struct Peak {
  double blas = 0, dnn = 0;
  double best() const { return std::max(blas, dnn); }
};
Peak gemm_peak(int64_t n = 1536) {
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  Peak p;
  auto a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  p.blas = best_rate([&] { torch::mm_out(c, a, b); }, 2.0 * n * n * n);
  auto x = torch::randn({16, n, 12, 12}), w = torch::randn({n, n, 1, 1});  // 2304 positions x n x n
  p.dnn = best_rate([&] { torch::conv2d(x, w); }, 2.0 * 16 * 144 * n * n);
  return p;
}

// Forward FLOPs of each layer of a unit on input x, in forward order.
class FlopCounter : public ObservingContext {
 public:
  std::vector<double> fwd;

 protected:
  void observe(const QuantLayer& l, int i, const torch::Tensor& x) override {
    if (static_cast<size_t>(i) >= fwd.size()) fwd.resize(i + 1, 0.0);
    const auto& w = l.weight;
    if (l.kind == LayerKind::Linear) {
      fwd[i] += 2.0 * (x.numel() / w.size(1)) * w.size(0) * w.size(1);
      return;
    }
    auto out = [&](int64_t in, int64_t k) { return (in + 2 * l.padding - l.dilation * (k - 1) - 1) / l.stride + 1; };
    const double positions = double(x.size(0)) * out(x.size(2), w.size(2)) * out(x.size(3), w.size(3));
    fwd[i] += 2.0 * positions * w.size(0) * w.size(1) * w.size(2) * w.size(3);
  }
};

// Training FLOPs of one step per unit (see the header comment), from one FP forward of a batch.
std::vector<double> step_flops(ModelAdapter& model, const torch::Tensor& batch_input, double extra_per_unit) {
  torch::NoGradGuard ng;
  std::vector<double> flops;
  torch::Tensor h = model.prologue(batch_input);
  for (Unit* u : model.units()) {
    FlopCounter fc;
    fc.begin_unit(*u);
    h = u->forward(h, fc);
    double f = 3 * extra_per_unit;
    for (size_t i = 0; i < fc.fwd.size(); ++i) f += (i == 0 ? 2 : 3) * fc.fwd[i];
    flops.push_back(f);
  }
  return flops;
}

struct ModelCase {
  std::string name, recipe_file;
  Workload workload;
};

struct Measured {
  std::vector<std::string> units;
  std::vector<double> flops;
  std::map<int, std::vector<double>> ms;  // by thread count
};

Measured measure(const ModelCase& mc, const std::vector<int>& threads, int64_t iters, int reps,
                 const std::string& profile) {
  auto task = make_task(mc.workload);
  Recipe r = Recipe::from_file(mc.recipe_file);
  r.iters = iters;
  const torch::Tensor calib = task->calibration(r);
  Measured m;
  {
    auto model = task->load_model();
    double attn = 0;
    if (auto* lm = dynamic_cast<LlamaModel*>(model.get())) {  // the bench knows its model: attention matmuls
      const auto& c = lm->config();
      attn = 2.0 * 2.0 * r.batch * c.n_heads * double(r.calib_seq_len) * r.calib_seq_len * (c.dim / c.n_heads);
    }
    m.flops = step_flops(*model, calib.slice(0, 0, r.batch), attn);
    for (Unit* u : model->units()) m.units.push_back(u->name());
  }
  std::map<int, std::vector<std::vector<double>>> runs;  // thread count -> run -> unit
  for (int rep = 0; rep < reps; ++rep) {
    for (int t : threads) {
      at::set_num_threads(t);
      auto model = task->load_model();
      QuantState state;
      std::unique_ptr<torch::autograd::profiler::RecordProfile> prof;
      if (!profile.empty() && rep == 0 && t == threads.back())
        prof = std::make_unique<torch::autograd::profiler::RecordProfile>(fmt::format("{}.{}.json", profile, mc.name));
      QuantizeReport report = quantize(*model, calib, r, state, [](const std::string&) {});
      std::vector<double> ms;
      for (auto& u : report.units) ms.push_back(u.ms_per_iter);
      runs[t].push_back(ms);
    }
  }
  for (auto& [t, rs] : runs) {
    for (size_t k = 0; k < rs.front().size(); ++k) {
      std::vector<double> v;
      for (auto& run : rs) v.push_back(run[k]);
      std::sort(v.begin(), v.end());
      m.ms[t].push_back(v[v.size() / 2]);
    }
  }
  return m;
}

void print_table(const ModelCase& mc, const Measured& m, const std::map<int, double>& peak, int64_t iters, int reps) {
  fmt::print("\n### {} ({}, {} iterations per unit, median of {} runs)\n\n| unit | GFLOP / step |", mc.name,
             mc.recipe_file, iters, reps);
  std::string rule = "|---|---:|";
  for (auto& [t, _] : m.ms) fmt::print(" ms / step, {0} thr | % of peak, {0} thr |", t), rule += "---:|---:|";
  fmt::print("\n{}\n", rule);
  for (size_t k = 0; k < m.units.size(); ++k) {
    fmt::print("| {} | {:.3f} |", m.units[k], m.flops[k] / 1e9);
    for (auto& [t, ms] : m.ms) {
      if (ms[k] <= 0) { fmt::print(" - | - |"); continue; }
      const double gflops = m.flops[k] / (ms[k] / 1e3) / 1e9;
      fmt::print(" {:.2f} | {:.1f} % |", ms[k], 100.0 * gflops / peak.at(t));
    }
    fmt::print("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads = {1, 2};
  int64_t iters = 200;
  int reps = 3;
  std::vector<std::string> models = {"resnet20", "stories260k"};
  std::string profile;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--threads") { threads.clear(); for (auto& s : split(v)) threads.push_back(std::stoi(s)); }
    else if (k == "--iters") iters = std::stoll(v);
    else if (k == "--reps") reps = std::max(1, std::stoi(v));
    else if (k == "--models") models = split(v);
    else if (k == "--profile") profile = v;
    else { std::cerr << "unknown option " << k << "\n"; return 2; }
  }
  init_runtime(threads.front());
  set_log_level(LogLevel::Warn);
  const std::string d = shared_dir() + "/data";
  std::map<std::string, ModelCase> cases;
  cases["resnet20"] = {"resnet20", "recipes/flexround-w4a4.json", {}};
  cases["resnet20"].workload.model = d + "/cifar10/resnet20.safetensors";
  cases["resnet20"].workload.arch = "resnet_cifar";
  cases["resnet20"].workload.data = "cifar10:" + d + "/cifar10";
  cases["stories260k"] = {"stories260k", "recipes/llm-flexround-w4.json", {}};
  cases["stories260k"].workload.model = d + "/lm/stories260K.bin";
  cases["stories260k"].workload.data = d + "/lm/tinystories_valid_first.txt";

  std::map<int, double> peak;
  fmt::print("{}\n", blas_info());
  for (int t : threads) {
    at::set_num_threads(t);
    const Peak p = gemm_peak();
    peak[t] = p.best();
    fmt::print("GEMM peak, {} thread(s): {:.1f} GFLOP/s (sgemm 1536^3 via torch::mm: {:.1f}; the same GEMM as a 1x1 "
               "conv, 2304 positions: {:.1f}; best of 6 each)\n", t, p.best(), p.blas, p.dnn);
  }
  for (const auto& name : models) {
    auto it = cases.find(name);
    if (it == cases.end()) { std::cerr << "unknown model " << name << " -> allowed: resnet20, stories260k\n"; return 2; }
    print_table(it->second, measure(it->second, threads, iters, reps, profile), peak, iters, reps);
  }
  return 0;
}
