// Precision sweep: every tensor of a model rounded to a reduced-precision format (see include/flexquant/sweep.h).
#include "flexquant/sweep.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace {

// A distinct, reproducible stochastic-rounding seed per rounded tensor (splitmix64's finaliser of seed + i).
uint64_t derive_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Formats whose exponent range is narrower than fp32's get a per-tensor scale; sbits<k> and bf16 do not.
bool needs_scale(const Format& f) { return !f.is_float() || f.as_float().exp_bits < 8; }

int significand_bits(const Format& f) { return f.is_float() ? f.as_float().man_bits : f.bits() - 1; }

// Rounds tensors to one format and mode; each call draws a fresh stochastic stream.
class TensorRounder {
 public:
  TensorRounder(Format f, RoundingMode mode, uint64_t seed) : f_(std::move(f)), mode_(mode), seed_(seed) {}
  torch::Tensor operator()(const torch::Tensor& x) {
    const uint64_t s = derive_seed(seed_, calls_++);
    const torch::Tensor xc = x.detach().to(torch::kCPU, torch::kFloat32);
    torch::Tensor q;
    if (needs_scale(f_)) {
      const double amax = torch::where(torch::isfinite(xc), xc.abs(), torch::zeros_like(xc)).max().item<double>();
      // A hair above amax / max so the largest element cannot land past max through the scale's own rounding:
      // on an IEEE format (fp16) that would round it to inf.
      const float scale = amax > 0 ? static_cast<float>(amax / f_.max_value() * (1 + 0x1p-20)) : 1.0f;
      q = quantize(xc, f_, ScaleParams::per_tensor(scale), mode_, s);
    } else {
      q = quantize(xc, f_, mode_, s);
    }
    // Keep the input's memory layout: an NHWC activation handed back as NCHW would make the next convolution
    // take another kernel, whose different summation order alone changes the logits.
    return q.to(x.device(), x.scalar_type()).contiguous(x.suggest_memory_format());
  }

 private:
  Format f_;
  RoundingMode mode_;
  uint64_t seed_;
  uint64_t calls_ = 0;
};

// Forwards everything to the caller's context and rounds what each activation site returns.
class RoundingContext : public UnitContext {
 public:
  RoundingContext(UnitContext& inner, TensorRounder& round) : inner_(inner), round_(round) {}
  torch::Tensor weight(const QuantLayer& layer, int i) override { return inner_.weight(layer, i); }
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) override {
    inner_.observe_input(layer, i, x);
  }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    return round_(inner_.act(site, j, x));
  }

 private:
  UnitContext& inner_;
  TensorRounder& round_;
};

class RoundedUnit : public Unit {
 public:
  RoundedUnit(Unit& inner, TensorRounder& round) : inner_(inner), round_(round) {}
  std::string name() const override { return inner_.name(); }
  std::vector<QuantLayer>& layers() override { return inner_.layers(); }
  const std::vector<ActSite>& act_sites() const override { return inner_.act_sites(); }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    RoundingContext rc(ctx, round_);
    return round_(inner_.forward(x, rc));
  }

 private:
  Unit& inner_;
  TensorRounder& round_;
};

class ActivationEmulator : public ModelAdapter {
 public:
  ActivationEmulator(ModelAdapter& model, const Format& f, RoundingMode mode, uint64_t seed)
      : model_(model), round_(f, mode, seed) {
    for (Unit* u : model_.units()) units_.push_back(std::make_unique<RoundedUnit>(*u, round_));
  }
  std::string arch() const override { return model_.arch(); }
  torch::Tensor prologue(const torch::Tensor& input) override { return round_(model_.prologue(input)); }
  torch::Tensor epilogue(const torch::Tensor& x) override { return round_(model_.epilogue(x)); }
  std::vector<Unit*> units() override {
    std::vector<Unit*> out;
    for (auto& u : units_) out.push_back(u.get());
    return out;
  }
  void to(torch::Device device) override { model_.to(device); }
  std::vector<NormFeed> norm_feeds() override { return model_.norm_feeds(); }
  std::vector<NamedTensor> named_tensors() override { return model_.named_tensors(); }

 private:
  ModelAdapter& model_;
  TensorRounder round_;
  std::vector<std::unique_ptr<RoundedUnit>> units_;
};

SweepPoint run_point(const Task& task, const Format& f, RoundingMode mode, const SweepOptions& o, uint64_t seed,
                     const torch::Tensor& ref) {
  Stopwatch sw;
  SweepPoint p{f.name(), significand_bits(f), !needs_scale(f), mode};
  auto model = task.load_model();
  if (o.weights) round_model_tensors(*model, f, mode, derive_seed(seed, 0));
  std::unique_ptr<ModelAdapter> view;
  if (o.activations) view = emulate_activations(*model, f, mode, derive_seed(seed, 1));
  UnitContext ctx;
  try {
    const Task::Outputs out = task.evaluate_outputs(view ? *view : *model, ctx);
    p.metric = out.metric;
    p.w1 = output_distance(ref, out.values);
  } catch (const NumericError&) {
    // The format overflowed into inf/NaN outputs: the row says so (nan) instead of ending the sweep.
    p.metric = p.w1 = std::nan("");
  }
  p.seconds = sw.seconds();
  return p;
}

}  // namespace

// sbits7 is bf16 (Format::name() prints the preset), so bf16 is not listed twice.
std::vector<Format> default_sweep_formats() {
  std::vector<Format> out;
  for (int k = 23; k >= 2; --k) out.push_back(Format::parse(fmt::format("sbits{}", k)));
  for (const char* n : {"fp16", "fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"})
    out.push_back(Format::parse(n));
  return out;
}

double wasserstein1(const torch::Tensor& a, const torch::Tensor& b) {
  FQ_CHECK(a.numel() == b.numel() && a.numel() > 0, ConfigError, "wasserstein1: samples of ", a.numel(), " and ",
           b.numel(), " values -> both must be non-empty and of equal size");
  const auto sa = std::get<0>(a.detach().reshape(-1).to(torch::kCPU, torch::kFloat64).sort());
  const auto sb = std::get<0>(b.detach().reshape(-1).to(torch::kCPU, torch::kFloat64).sort());
  return (sa - sb).abs().mean().item<double>();
}

double output_distance(const torch::Tensor& ref, const torch::Tensor& got) {
  FQ_CHECK(ref.dim() == 2 && ref.sizes() == got.sizes(), ConfigError, "output_distance: outputs ", ref.sizes(),
           " and ", got.sizes(), " -> both must be [N, K] of the same shape");
  double sum = 0;
  for (int64_t j = 0; j < ref.size(1); ++j) sum += wasserstein1(ref.select(1, j), got.select(1, j));
  return sum / static_cast<double>(ref.size(1));
}

void round_model_tensors(ModelAdapter& model, const Format& f, RoundingMode mode, uint64_t seed) {
  torch::NoGradGuard no_grad;
  TensorRounder round(f, mode, seed);
  for (NamedTensor& t : model.named_tensors())
    if (t.tensor && t.tensor->defined()) *t.tensor = round(*t.tensor);
}

std::unique_ptr<ModelAdapter> emulate_activations(ModelAdapter& model, const Format& f, RoundingMode mode,
                                                  uint64_t seed) {
  return std::make_unique<ActivationEmulator>(model, f, mode, seed);
}

SweepReport precision_sweep(const Task& task, const SweepOptions& o,
                            const std::function<void(const std::string&)>& progress,
                            const std::function<void(const SweepPoint&)>& on_point) {
  FQ_CHECK(!o.formats.empty() && !o.modes.empty(), ConfigError,
           "precision sweep: no formats or no rounding modes -> give at least one of each");
  FQ_CHECK(o.weights || o.activations, ConfigError,
           "precision sweep: neither weights nor activations are rounded -> enable at least one");
  SweepReport r;
  r.metric_name = task.metric_name();
  r.higher_is_better = task.higher_is_better();
  auto fp_model = task.load_model();
  UnitContext fp;
  const Task::Outputs ref = task.evaluate_outputs(*fp_model, fp);
  fp_model.reset();
  r.fp_metric = ref.metric;
  r.outputs = ref.what;
  for (size_t i = 0; i < o.formats.size(); ++i) {
    for (RoundingMode mode : o.modes) {
      throw_if_stop_requested(fmt::format("sweep before {} {}", o.formats[i].name(), rounding_mode_name(mode)));
      r.points.push_back(run_point(task, o.formats[i], mode, o, derive_seed(o.seed, i), ref.values));
      const SweepPoint& p = r.points.back();
      if (progress)
        progress(fmt::format("sweep {}/{}: {} {}: {} {:.4f}, W1 {:.4g} ({:.1f} s)", r.points.size(),
                             o.formats.size() * o.modes.size(), p.format, rounding_mode_name(mode), r.metric_name,
                             p.metric, p.w1, p.seconds));
      if (on_point) on_point(p);
    }
  }
  return r;
}

std::string sweep_table(const SweepReport& r) {
  std::vector<RoundingMode> modes;
  std::map<std::string, std::map<RoundingMode, const SweepPoint*>> by_format;
  std::vector<std::string> order;
  for (const SweepPoint& p : r.points) {
    if (std::find(modes.begin(), modes.end(), p.mode) == modes.end()) modes.push_back(p.mode);
    if (!by_format.count(p.format)) order.push_back(p.format);
    by_format[p.format][p.mode] = &p;
  }
  std::string head = "| format | significand bits |", rule = "|---|---|";
  for (RoundingMode m : modes) {
    head += fmt::format(" {} {} | W1 {} |", r.metric_name, rounding_mode_name(m), rounding_mode_name(m));
    rule += "---|---|";
  }
  std::string out = head + "\n" + rule + "\n";
  out += fmt::format("| FP32 | 23 |");
  for (size_t i = 0; i < modes.size(); ++i) out += fmt::format(" {:.2f} | 0 |", r.fp_metric);
  out += "\n";
  for (const std::string& f : order) {
    const auto& row = by_format.at(f);
    out += fmt::format("| {} | {} |", f, row.begin()->second->significand_bits);
    for (RoundingMode m : modes) {
      auto it = row.find(m);
      out += it == row.end() ? " | |" : fmt::format(" {:.2f} | {:.4g} |", it->second->metric, it->second->w1);
    }
    out += "\n";
  }
  return out;
}

std::string sweep_csv(const SweepReport& r) {
  std::string out = sweep_csv_header();
  out += fmt::format("fp32,23,1,none,{:.6f},0,0\n", r.fp_metric);
  for (const SweepPoint& p : r.points) out += sweep_csv_line(p);
  return out;
}

std::string sweep_csv_header() { return "format,significand_bits,fp32_range,mode,metric,w1,seconds\n"; }

std::string sweep_csv_line(const SweepPoint& p) {
  return fmt::format("{},{},{},{},{:.6f},{:.6g},{:.2f}\n", p.format, p.significand_bits, int(p.fp32_range),
                     rounding_mode_name(p.mode), p.metric, p.w1, p.seconds);
}

}  // namespace flexquant
