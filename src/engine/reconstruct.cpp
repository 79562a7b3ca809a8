// Block-wise reconstruction engine (BRECQ order, QDrop mixing, FlexRound/AdaRound/LRQ rounders, LSQ
// activation steps). For each unit k, in forward order (methods.md §10.5):
//   targets  Y_fp = Unit_k^FP(X_fp)            (FP chain)
//   inputs   X_q  from units < k already hardened (activation quantizers on)
//   minimise lp_loss(Unit_k^Q(mix(X_q, X_fp)), Y_fp) + regulariser, Adam, cosine schedule
//   harden, then X_q <- Unit_k^Q(X_q), X_fp <- Y_fp.
// On CPU a unit that asks for it (Unit::step_shards) runs each train step as single-threaded shards of the batch.
#include "flexquant/reconstruct.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/autograd.h>

#include <cmath>
#include <filesystem>

#include "flexquant/adam.h"
#include "flexquant/distribution_correction.h"
#include "flexquant/error.h"
#include "flexquant/ggml_types.h"
#include "flexquant/gguf_mix.h"  // weight.mix: a GGUF type per layer
#include "flexquant/gptq.h"  // HessianCollector
#include "flexquant/runtime.h"
#include "checkpoint.h"

namespace flexquant {
namespace {

constexpr int64_t kChunk = 128;  // samples per no-grad forward chunk

// Sum over dim 1, mean over the rest (BRECQ/QDrop lp_loss, p = 2; methods.md §10.7).
torch::Tensor lp_loss(const torch::Tensor& y, const torch::Tensor& target) {
  auto d = y - target;
  d = d * d;
  if (d.dim() < 2) return d.mean();
  return d.sum(1).mean();
}

// Runs fn over `x` in chunks along dim 0 without gradients and concatenates the outputs.
torch::Tensor chunked(const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> outs;
  for (int64_t i = 0; i < x.size(0); i += kChunk) outs.push_back(fn(x.slice(0, i, std::min(i + kChunk, x.size(0)))));
  return torch::cat(outs, 0);
}

// Runs fn over `x` one sample per task without gradients, each task on one thread, and concatenates the outputs in
// order. For sharded units: every GEMM then has one shape whatever the thread count (OpenBLAS's bits depend on both
// the shape and the thread count), so the chains, targets and probes are the same at any --threads.
torch::Tensor per_sample(const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  std::vector<torch::Tensor> outs(x.size(0));
  at::parallel_for(0, x.size(0), 1, [&](int64_t b, int64_t e) {
    torch::NoGradGuard ng;
    for (int64_t i = b; i < e; ++i) outs[i] = fn(x.slice(0, i, i + 1));
  });
  return outs.empty() ? x : torch::cat(outs, 0);
}

// Runs fn with LibTorch (and so OpenBLAS) on one thread, then restores the thread count: a one-off pass over a sharded
// unit whose statistics (activation grids, Hessians) must not depend on how work was split.
void on_one_thread(const std::function<void()>& fn) {
  const int n = at::get_num_threads();
  at::set_num_threads(1);
  try {
    fn();
  } catch (...) {
    at::set_num_threads(n);
    throw;
  }
  at::set_num_threads(n);
}

// Context used while training a unit: weights from the rounders, activations through LSQ quantizers.
class TrainContext : public UnitContext {
 public:
  std::vector<Rounder*> rounders;
  std::vector<ActQuantizer*> acts;  // null where the site is not quantized
  bool hard = false;
  bool dynamic_acts = true;  // false: per-token (dynamic) quantizers pass x through, for weight-only training
  bool calibrating = false;
  std::vector<bool> calibrated;
  int fp_from = 1 << 30;  // layers with index >= fp_from run FP weights (layer-wise input capture)
  torch::Tensor weight(const QuantLayer& layer, int i) override {
    return i >= fp_from ? layer.weight : rounders.at(i)->forward(hard);
  }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    ActQuantizer* q = active(j);
    if (!q) return x;
    if (calibrating && !calibrated[j]) {
      q->calibrate(x.detach());
      calibrated[j] = true;
    }
    return q->forward(x);
  }
  /// The quantizer at site j, or null where x passes through.
  ActQuantizer* active(int j) const {
    ActQuantizer* q = acts.at(j);
    return q && (dynamic_acts || !q->spec().per_token) ? q : nullptr;
  }
};

// One shard of a data-parallel train step: `rows` samples of a batch of `batch`, the weights the rounders
// gave for this step (shared, read only) and the shard's own QDrop generator. LSQ's gradient scale is the whole
// batch's, so that the shards' summed gradients are the full batch's.
class ShardContext : public UnitContext {
 public:
  ShardContext(const TrainContext& base, const std::vector<torch::Tensor>& weights, int64_t rows, int64_t batch,
               at::Generator gen)
      : base_(base), weights_(weights), rows_(rows), batch_(batch), gen_(std::move(gen)) {}
  torch::Tensor weight(const QuantLayer&, int i) override { return weights_.at(i); }
  torch::Tensor act(const ActSite&, int j, const torch::Tensor& x) override {
    ActQuantizer* q = base_.active(j);
    return q ? q->forward(x, {x.numel() / rows_ * batch_, gen_}) : x;
  }

 private:
  const TrainContext& base_;
  const std::vector<torch::Tensor>& weights_;
  int64_t rows_, batch_;
  at::Generator gen_;
};

// Records the input of one layer while `inner` (FP when null) runs the unit.
class InputCapture : public ObservingContext {
 public:
  InputCapture(int layer, UnitContext* inner) : ObservingContext(inner), layer_(layer) {}
  std::vector<torch::Tensor> captured;

 protected:
  void observe(const QuantLayer&, int i, const torch::Tensor& x) override {
    if (i == layer_) captured.push_back(x.detach());
  }

 private:
  int layer_;
};

// Input of layer i over all of x, with `inner` deciding weights and activations.
torch::Tensor capture_input(Unit& unit, int i, const torch::Tensor& x, UnitContext* inner) {
  InputCapture cap(i, inner);
  chunked(x, [&](const torch::Tensor& xb) { return unit.forward(xb, cap); });
  return torch::cat(cap.captured, 0);
}

// QDrop (methods.md §3.2): element-wise, keep the FP input with probability p, else the quantized one.
torch::Tensor qdrop_mix(const torch::Tensor& x_q, const torch::Tensor& x_fp, double p) {
  if (p <= 0) return x_q;
  return torch::where(torch::rand_like(x_q) < p, x_fp, x_q);
}

// Adam over the rounding parameters (group 0, recipe.lr with its schedule) and the LSQ steps (group 1,
// act.lr, cosine). step(it) fills every parameter's gradient and returns the reconstruction loss.
void run_adam(const std::vector<torch::Tensor>& w_params, const std::vector<torch::Tensor>& a_params, int64_t iters,
              const Recipe& recipe, const std::string& what, const std::function<double(int64_t)>& step,
              const std::function<void(int64_t, double)>& report) {
  if (iters <= 0 || (w_params.empty() && a_params.empty())) return;
  std::vector<FusedAdam::Group> groups;
  if (!w_params.empty()) groups.push_back({w_params, recipe.lr});
  if (!a_params.empty()) groups.push_back({a_params, recipe.act_lr});
  FusedAdam opt(groups);
  const int64_t report_every = std::max<int64_t>(1, iters / 10);
  double running = 0;
  for (int64_t it = 0; it < iters; ++it) {
    // Cosine to 0 over exactly `iters` steps (FlexRound); activation steps always cosine (QDrop).
    double cosf = 0.5 * (1 + std::cos(M_PI * it / iters));
    size_t g = 0;
    if (!w_params.empty()) opt.set_lr(g++, recipe.lr_schedule == "cosine" ? recipe.lr * cosf : recipe.lr);
    if (!a_params.empty()) opt.set_lr(g, recipe.act_lr * cosf);
    throw_if_stop_requested(fmt::format("in {} at iteration {}/{}", what, it, iters));
    opt.zero_grad();
    const double lv = step(it);
    opt.step();
    FQ_CHECK(std::isfinite(lv), NumericError, what, ": loss became ", lv, " at iteration ", it,
             "; hint: lower recon.lr (now ", recipe.lr, ")");
    running = it == 0 ? lv : 0.9 * running + 0.1 * lv;
    if ((it + 1) % report_every == 0 || it + 1 == iters) report(it + 1, running);
  }
}

void check_finite(const torch::Tensor& t, const std::string& what, const std::string& hint) {
  FQ_CHECK(torch::isfinite(t).all().item<bool>(), NumericError, what, " contains NaN or inf; hint: ", hint);
}

}  // namespace

torch::Tensor prediction_difference(const torch::Tensor& z_fp, const torch::Tensor& z_q, double temperature) {
  FQ_CHECK(z_fp.sizes() == z_q.sizes(), ConfigError, "prediction_difference: logits ", z_fp.sizes(), " and ",
           z_q.sizes(), " -> must have the same shape");
  const int64_t classes = z_q.size(-1);
  const torch::Tensor log_q = torch::log_softmax(z_q.reshape({-1, classes}) / temperature, -1);
  const torch::Tensor log_p = torch::log_softmax(z_fp.reshape({-1, classes}) / temperature, -1);
  return (log_p.exp() * (log_p - log_q)).sum(-1).mean();
}

std::string site_key(const Unit& unit, const ActSite& site) { return unit.name() + "/" + site.name; }

torch::Tensor QuantizedContext::act(const ActSite& site, int j, const torch::Tensor& x) {
  FQ_INTERNAL_ASSERT(unit_ != nullptr, "QuantizedContext used outside ModelAdapter::forward (no begin_unit)");
  auto it = state_.acts.find(site_key(*unit_, site));
  if (it == state_.acts.end()) return x;
  return it->second->forward(x);
}

torch::Tensor quantized_forward(ModelAdapter& model, const QuantState& state, const torch::Tensor& input) {
  QuantizedContext ctx(state);
  return model.forward(input, ctx);
}

// A type mix names a grid per layer (the GGUF type's own); a mixed-precision allocation a width; otherwise the
// recipe's grid, with the adapter's edge layers at first_last_bits.
WeightQuantSpec layer_spec(const QuantLayer& l, const Recipe& recipe, const std::map<std::string, GgmlType>& mix,
                           const std::map<std::string, int>& layer_bits) {
  if (!mix.empty()) {
    WeightQuantSpec s = *ggml_weight_spec(mix.at(l.name));
    s.init = parse_scale_init(recipe.weight_init);
    return s;
  }
  if (auto it = layer_bits.find(l.name); it != layer_bits.end()) return recipe.weight_spec(it->second);
  const bool edge = l.role != LayerRole::Hidden;  // the stem or the classifier, as the adapter says
  return recipe.weight_spec(edge && recipe.first_last_bits > 0 ? recipe.first_last_bits : 0);
}

std::vector<std::vector<WeightQuantSpec>> layer_specs(ModelAdapter& model, const Recipe& recipe,
                                                      const std::map<std::string, int>& layer_bits) {
  const auto mix = recipe.weight_mix.empty() ? std::map<std::string, GgmlType>{} : gguf_mix_types(recipe.weight_mix, model);
  auto units = model.units();
  std::vector<std::vector<WeightQuantSpec>> specs;
  for (size_t k = 0; k < units.size(); ++k) {
    auto& layers = units[k]->layers();
    std::vector<WeightQuantSpec> s;
    for (const QuantLayer& l : layers) s.push_back(layer_spec(l, recipe, mix, layer_bits));
    specs.push_back(std::move(s));
  }
  return specs;
}

namespace {

// One unit's quantizers while it is reconstructed.
struct UnitRun {
  UnitRun(Unit& u, size_t k) : unit(u), index(k) {}
  Unit& unit;
  size_t index;
  torch::Tensor x_fp;     // the FP chain's input, or PD-Quant's corrected copy of it: QDrop's partner
  torch::Tensor y_fp;     // the FP unit's output on x_fp: the target
  torch::Tensor y_chain;  // the FP unit's output on the FP chain: the next unit's FP input
  std::vector<std::unique_ptr<Rounder>> rounders;
  std::vector<std::shared_ptr<ActQuantizer>> acts;  // null where a site stays FP
  TrainContext ctx;
  UnitReport report;
};

// The engine: one unit at a time, in forward order (collect inputs, set up quantizers, train, harden,
// propagate). It asks the method's registry entry what to do and the adapter's roles how to treat each
// layer and site; it names neither.
class Reconstructor {
 public:
  Reconstructor(ModelAdapter& model, const Recipe& recipe, QuantState& state, const ProgressFn& progress,
                const CheckpointOptions& checkpoint)
      : model_(model), recipe_(recipe), method_(method_info(recipe.method)), state_(state), progress_(progress),
        checkpoint_(checkpoint), gen_(at::make_generator<at::CPUGeneratorImpl>(recipe.seed)) {}

  QuantizeReport run(const torch::Tensor& calib_inputs, int64_t max_units);

 private:
  void say(const std::string& line) const {
    if (progress_) progress_(line);
    else log_info(line);
  }
  int64_t iters() const { return method_.needs.training ? recipe_.iters : 0; }
  int64_t probe_n() const { return std::min<int64_t>(x_q_.size(0), std::max<int64_t>(recipe_.batch, 64)); }
  UnitReport run_unit(Unit& unit, size_t k);
  torch::Tensor corrected_input(const UnitRun& u);
  bool sharded(const Unit& unit) const { return !x_q_.is_cuda() && unit.step_shards() > 1; }
  torch::Tensor forward_all(Unit& unit, const torch::Tensor& x, UnitContext& ctx) const;
  double probe(const UnitRun& u, UnitContext& ctx) const;
  void setup_rounders(UnitRun& u);
  std::vector<LayerStats> collect_stats(UnitRun& u);
  void setup_act_quantizers(UnitRun& u);
  double probe_loss(UnitRun& u);
  void train_block(UnitRun& u);
  double block_step(UnitRun& u, int64_t it, const std::vector<torch::Tensor>& a_params,
                    std::vector<at::Generator>& gens);
  torch::Tensor prediction_loss(const UnitRun& u, const torch::Tensor& y_q, const torch::Tensor& idx);
  void train_layers(UnitRun& u);
  void harden(UnitRun& u);
  void correct_biases(UnitRun& u, const std::vector<torch::Tensor>& w_fp);
  void propagate(UnitRun& u);
  torch::Tensor sample() { return torch::randint(x_q_.size(0), {std::min(recipe_.batch, x_q_.size(0))}, gen_, torch::kLong).to(x_q_.device()); }
  void progress_line(const UnitRun& u, const std::string& what, int64_t it, double running) const;
  size_t resume(QuantizeReport& report);
  void save_checkpoint(size_t units_done, const QuantizeReport& report);

  ModelAdapter& model_;
  const Recipe& recipe_;
  const MethodInfo& method_;
  QuantState& state_;
  ProgressFn progress_;
  CheckpointOptions checkpoint_;
  std::string fingerprint_;
  at::Generator gen_;  // batch sampling across all units
  std::vector<std::vector<WeightQuantSpec>> specs_;
  size_t num_units_ = 0;
  torch::Tensor x_fp_, x_q_;  // the current unit's inputs on the FP and the quantized chain
  std::vector<Unit*> units_;
  torch::Tensor fp_logits_;  // PD-Quant: the FP model's logits on every calibration input
  Stopwatch unit_sw_;
};

QuantizeReport Reconstructor::run(const torch::Tensor& calib_inputs, int64_t max_units) {
  Stopwatch total;
  QuantizeReport report;
  report.calib_samples = calib_inputs.size(0);
  auto units = model_.units();
  FQ_CHECK(!units.empty(), ModelError, "model \"", model_.arch(), "\" has no reconstruction units");
  FQ_CHECK(max_units >= 0, ConfigError, "max_units ", max_units, " -> allowed >= 0 (0 = all units)");
  if (max_units > 0 && max_units < static_cast<int64_t>(units.size())) units.resize(max_units);
  num_units_ = units.size();
  specs_ = layer_specs(model_, recipe_, state_.layer_bits);
  units_ = model_.units();
  FQ_CHECK(recipe_.dc_iters == 0 || std::any_of(units_.begin(), units_.end(), [](Unit* x) { return has_batchnorm_statistics(*x); }),
           ConfigError, "pd.dc_iters ", recipe_.dc_iters, ": model \"", model_.arch(), "\" has no layer with folded ",
           "BatchNorm statistics to correct towards (e.g. an ONNX file whose exporter folded them) -> set pd.dc_iters=0, ",
           "or load the model from a file that still holds its BatchNorms");
  x_fp_ = chunked(calib_inputs, [&](const torch::Tensor& x) { return model_.prologue(x); });
  x_q_ = x_fp_;
  if (recipe_.pd_weight > 0) {
    auto logits = [&](const torch::Tensor& x) { return model_.forward(x); };
    fp_logits_ = sharded(*units_.front()) ? per_sample(calib_inputs, logits) : chunked(calib_inputs, logits);
  }
  if (!checkpoint_.path.empty()) fingerprint_ = run_fingerprint(model_, recipe_, calib_inputs);
  size_t k = resume(report);
  try {
    for (; k < units.size(); ++k) {
      throw_if_stop_requested(fmt::format("before unit {}/{}", k + 1, units.size()));
      report.units.push_back(run_unit(*units[k], k));
      save_checkpoint(k + 1, report);
    }
  } catch (const InterruptedError& e) {
    throw InterruptedError(std::string(e.what()) +
                           (checkpoint_.path.empty()
                                ? "; no checkpoint was being written -> quantize with --out (or --checkpoint F) to keep "
                                  "finished units"
                                : fmt::format("; {} finished units are in {} -> rerun the same command with --resume", k,
                                              checkpoint_.path)));
  }
  report.seconds = total.seconds();
  report.peak_rss_bytes = peak_rss_bytes();
  return report;
}

UnitReport Reconstructor::run_unit(Unit& unit, size_t k) {
  const bool mem_window = reset_peak_rss();
  unit_sw_ = Stopwatch();
  torch::manual_seed(recipe_.seed + k);  // QDrop masks and LRQ init: reproducible per unit
  UnitRun u(unit, k);
  UnitContext fp_ctx;
  u.x_fp = x_fp_;
  u.y_fp = u.y_chain = forward_all(unit, x_fp_, fp_ctx);
  if (recipe_.dc_iters > 0 && has_batchnorm_statistics(unit)) {
    u.x_fp = corrected_input(u);
    u.y_fp = forward_all(unit, u.x_fp, fp_ctx);
  }
  setup_rounders(u);
  setup_act_quantizers(u);
  u.report.name = unit.name();
  u.report.method = recipe_.method;
  u.report.loss_start = probe_loss(u);
  Stopwatch train_sw;
  if (recipe_.recon_unit == "block") train_block(u);
  else train_layers(u);
  u.report.iters = iters();
  const double train_seconds = train_sw.seconds();
  std::vector<torch::Tensor> w_fp;
  for (const QuantLayer& l : unit.layers()) w_fp.push_back(l.weight.detach());
  harden(u);
  if (recipe_.bias_correction) correct_biases(u, w_fp);
  propagate(u);
  UnitReport& ur = u.report;
  ur.seconds = unit_sw_.seconds();
  ur.ms_per_iter = ur.iters > 0 ? 1000.0 * train_seconds / ur.iters : 0;
  ur.peak_rss_bytes = mem_window ? window_peak_rss_bytes() : 0;
  say(fmt::format("[{:>2}/{}] {:<10} done: loss {:.3e} -> {:.3e}, {}", k + 1, num_units_, unit.name(),
                  ur.loss_start, ur.loss_end, format_duration(ur.seconds)));
  return ur;
}

// PD-Quant's distribution correction of the unit's FP input (methods.md §4b).
torch::Tensor Reconstructor::corrected_input(const UnitRun& u) {
  Stopwatch sw;
  auto line = [&](const std::string& what) {
    return fmt::format("[{:>2}/{}] {:<10} distribution correction: {}", u.index + 1, num_units_, u.unit.name(), what);
  };
  DistributionCorrection opt{recipe_.dc_iters, recipe_.dc_lr, recipe_.dc_lambda, recipe_.batch};
  opt.progress = [&](int64_t done, int64_t total) {
    if (done < total)
      say(line(fmt::format("{}/{} samples, {} eta {}", done, total, format_duration(sw.seconds()),
                           format_duration(sw.seconds() / done * (total - done)))));
  };
  const CorrectedInput c = correct_distribution(u.unit, x_fp_, opt);
  say(line(fmt::format("{} steps per batch of {}, objective {:.3e} -> {:.3e}, {}", recipe_.dc_iters, recipe_.batch,
                       c.loss_start, c.loss_end, format_duration(sw.seconds()))));
  return c.x;
}

// Statistics the method asked for, per layer of the unit (GPTQ: Hessians of the quantized-path inputs with the
// unit's FP weights, as GPTQ's default non-true-sequential mode).
std::vector<LayerStats> Reconstructor::collect_stats(UnitRun& u) {
  auto& layers = u.unit.layers();
  std::vector<LayerStats> stats(layers.size());
  if (!method_.needs.hessian) return stats;
  HessianCollector hc;
  auto collect = [&] { chunked(x_q_, [&](const torch::Tensor& x) { return u.unit.forward(x, hc); }); };
  if (sharded(u.unit)) on_one_thread(collect);
  else collect();
  for (size_t i = 0; i < layers.size(); ++i) stats[i].hessian = hc.at(layers[i].name).hessian();
  return stats;
}

// Every rounder starts at round-to-nearest on its initial grid.
void Reconstructor::setup_rounders(UnitRun& u) {
  auto& layers = u.unit.layers();
  for (auto& l : layers) check_finite(l.weight, "weight of layer \"" + l.name + "\"", "the model file is corrupt");
  const auto stats = collect_stats(u);
  const auto& specs = specs_[u.index];
  for (size_t i = 0; i < layers.size(); ++i) {
    auto r = make_rounder(method_.name, recipe_.rounder);
    r->init(layers[i].weight, specs[i], init_qparams(layers[i].weight, specs[i]), stats[i]);
    u.ctx.rounders.push_back(r.get());
    u.rounders.push_back(std::move(r));
  }
}

// LSQ quantizers at the sites the recipe quantizes; static grids calibrated from (up to) 256 quantized-path
// inputs with the weights at their initial grid.
void Reconstructor::setup_act_quantizers(UnitRun& u) {
  for (const ActSite& s : u.unit.act_sites()) {
    const ActQuantSpec as = recipe_.act_spec(s.role);
    std::shared_ptr<ActQuantizer> q;
    if (as.bits < 32) q = std::make_shared<ActQuantizer>(as, s.non_negative);
    u.acts.push_back(q);
    u.ctx.acts.push_back(q.get());
  }
  if (std::none_of(u.acts.begin(), u.acts.end(), [](auto& q) { return q != nullptr; })) return;
  torch::NoGradGuard ng;
  u.ctx.calibrating = true;
  u.ctx.hard = true;
  u.ctx.calibrated.assign(u.acts.size(), false);
  auto calibrate = [&] { u.unit.forward(x_q_.slice(0, 0, std::min<int64_t>(x_q_.size(0), 256)), u.ctx); };
  if (sharded(u.unit)) on_one_thread(calibrate);
  else calibrate();
  u.ctx.calibrating = false;
}

// The unit over all of x without gradients: per sample where the unit is sharded, in chunks otherwise.
torch::Tensor Reconstructor::forward_all(Unit& unit, const torch::Tensor& x, UnitContext& ctx) const {
  auto fn = [&](const torch::Tensor& xb) { return unit.forward(xb, ctx); };
  return sharded(unit) ? per_sample(x, fn) : chunked(x, fn);
}

// lp_loss of the unit under ctx against its target on the first probe_n() inputs of the quantized chain; a sharded
// unit's as the ordered mean of per-sample losses, each on one thread (the same at any thread count).
double Reconstructor::probe(const UnitRun& u, UnitContext& ctx) const {
  torch::NoGradGuard ng;
  const int64_t n = probe_n();
  if (!sharded(u.unit)) return lp_loss(u.unit.forward(x_q_.slice(0, 0, n), ctx), u.y_fp.slice(0, 0, n)).item<double>();
  std::vector<double> losses(n);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    torch::NoGradGuard ng_task;
    for (int64_t k = b; k < e; ++k)
      losses[k] = lp_loss(u.unit.forward(x_q_.slice(0, k, k + 1), ctx), u.y_fp.slice(0, k, k + 1)).item<double>();
  });
  double sum = 0;
  for (double l : losses) sum += l;
  return sum / static_cast<double>(n);
}

// Loss of the current hard rounding on a fixed probe batch (for the report).
double Reconstructor::probe_loss(UnitRun& u) {
  torch::NoGradGuard ng;
  u.ctx.hard = true;
  for (auto& q : u.acts) if (q) q->set_training(false);
  if (!sharded(u.unit)) return probe(u, u.ctx);
  std::vector<torch::Tensor> w;  // the hard weights once, read by every task
  for (Rounder* r : u.ctx.rounders) w.push_back(r->forward(true).detach());
  ShardContext ctx(u.ctx, w, 1, 1, at::Generator());
  return probe(u, ctx);
}

void Reconstructor::progress_line(const UnitRun& u, const std::string& what, int64_t it, double running) const {
  const double el = unit_sw_.seconds();
  say(fmt::format("[{:>2}/{}] {:<10} {} it {:>5}/{} loss {:.3e} (start {:.3e}) {} eta {}", u.index + 1, num_units_,
                  what, recipe_.method, it, iters(), running, u.report.loss_start, format_duration(el),
                  format_duration(el / it * (iters() - it))));
}

// BRECQ: all of the unit's rounders and LSQ steps against the unit's FP output.
void Reconstructor::train_block(UnitRun& u) {
  std::vector<torch::Tensor> w_params, a_params;
  for (auto& r : u.rounders) for (auto& p : r->parameters()) w_params.push_back(p);
  for (auto& q : u.acts) if (q) for (auto& p : q->parameters()) a_params.push_back(p);
  u.ctx.hard = false;
  for (auto& q : u.acts) if (q) q->set_training(true, recipe_.qdrop);
  // Dynamic per-token quantizers learn nothing; with them off the rounders fit the weights alone
  // (FlexRound's released W4A8 code), which measured better than training through their noise.
  u.ctx.dynamic_acts = recipe_.dynamic_acts_in_loop;
  // The unit's shards on CPU, each with its own QDrop stream seeded per unit; one shard draws from torch's
  // default generator, seeded per unit in run_unit.
  const int64_t shards = x_q_.is_cuda() ? 1 : std::max<int64_t>(1, std::min({u.unit.step_shards(), recipe_.batch,
                                                                             x_q_.size(0)}));
  std::vector<at::Generator> gens(shards);
  if (shards > 1)
    for (int64_t s = 0; s < shards; ++s)
      gens[s] = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(recipe_.seed) * 1000003u +
                                                         u.index * 1024 + s);
  const int64_t n_it = iters();
  run_adam(w_params, a_params, n_it, recipe_, "unit \"" + u.unit.name() + "\"",
           [&](int64_t it) { return block_step(u, it, a_params, gens); },
           [&](int64_t it, double running) { progress_line(u, u.unit.name(), it, running); });
  u.ctx.dynamic_acts = true;
}

// One step of block reconstruction, data-parallel: the rounders give the step's weights once; the batch is cut
// into gens.size() shards (fixed, not the thread count, so results do not depend on it), each running forward
// and backward to those weights and the LSQ steps on one thread; the shards' gradients are summed in shard
// order and sent back through the rounders with the regulariser. Returns the reconstruction loss.
double Reconstructor::block_step(UnitRun& u, int64_t it, const std::vector<torch::Tensor>& a_params,
                                 std::vector<at::Generator>& gens) {
  const torch::Tensor idx = sample();
  const torch::Tensor x_q = x_q_.index_select(0, idx);
  const torch::Tensor xin = recipe_.qdrop > 0 ? qdrop_mix(x_q, u.x_fp.index_select(0, idx), recipe_.qdrop) : x_q;
  const torch::Tensor y_fp = u.y_fp.index_select(0, idx);
  const int64_t B = xin.size(0), S = static_cast<int64_t>(gens.size()), L = u.ctx.rounders.size();
  // Layers are independent: a sharded (small-op) unit runs their rounders in parallel too.
  auto each_layer = [&](const std::function<void(int64_t)>& fn) {
    if (S > 1) at::parallel_for(0, L, 1, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) fn(i); });
    else for (int64_t i = 0; i < L; ++i) fn(i);
  };
  std::vector<torch::Tensor> w(L), w_in(L), inputs;  // the rounders' weights, the shards' copies, what shards differentiate
  each_layer([&](int64_t i) {
    w[i] = u.ctx.rounders[i]->forward(false);
    w_in[i] = w[i].detach().requires_grad_(w[i].requires_grad());
  });
  for (int64_t i = 0; i < L; ++i) if (w[i].requires_grad()) inputs.push_back(w_in[i]);
  inputs.insert(inputs.end(), a_params.begin(), a_params.end());
  std::vector<std::vector<torch::Tensor>> grads(S);
  std::vector<double> losses(S);
  auto run_shard = [&](int64_t s) {
    const int64_t b = s * B / S, e = (s + 1) * B / S;
    ShardContext ctx(u.ctx, w_in, e - b, B, gens[s]);
    const torch::Tensor y = u.unit.forward(xin.slice(0, b, e), ctx);
    torch::Tensor loss = lp_loss(y, y_fp.slice(0, b, e));
    if (recipe_.pd_weight > 0) {  // on purely quantized inputs: without QDrop those are xin, whose output is y
      const torch::Tensor ids = idx.slice(0, b, e);
      loss = loss + prediction_loss(u, recipe_.qdrop > 0 ? u.unit.forward(x_q.slice(0, b, e), ctx) : y, ids);
    }
    loss = loss * (static_cast<double>(e - b) / B);  // every term is a mean over samples
    losses[s] = loss.item<double>();
    if (!inputs.empty()) grads[s] = torch::autograd::grad({loss}, inputs, {}, false, false, /*allow_unused=*/true);
  };
  if (S == 1) run_shard(0);
  else at::parallel_for(0, S, 1, [&](int64_t b, int64_t e) { for (int64_t s = b; s < e; ++s) run_shard(s); });

  auto shard_sum = [&](size_t k) {  // in shard order, whatever the thread count
    torch::Tensor sum;
    for (int64_t s = 0; s < S; ++s)
      if (grads[s][k].defined()) sum = sum.defined() ? sum + grads[s][k] : grads[s][k];
    return sum;
  };
  std::vector<int64_t> slot(L, -1);  // layer i's place in inputs
  for (int64_t i = 0, k = 0; i < L; ++i) if (w[i].requires_grad()) slot[i] = k++;
  each_layer([&](int64_t i) {
    if (slot[i] < 0) return;
    const torch::Tensor gw = shard_sum(slot[i]);
    if (gw.defined()) torch::autograd::backward({w[i]}, {gw});
  });
  std::vector<torch::Tensor> regs, ones;  // after the layers: a regulariser adds to the same parameters' gradients
  for (auto& r : u.rounders) {
    torch::Tensor reg = r->regularizer(it, iters());
    if (reg.defined() && reg.requires_grad()) regs.push_back(reg), ones.push_back(torch::ones_like(reg));
  }
  if (!regs.empty()) torch::autograd::backward(regs, ones);
  size_t k = inputs.size() - a_params.size();
  for (const torch::Tensor& p : a_params) {
    const torch::Tensor ga = shard_sum(k++);
    if (ga.defined()) p.mutable_grad() = ga;
  }
  double loss = 0;
  for (double l : losses) loss += l;
  return loss;
}

// PD-Quant (methods.md §4a): the unit's output on purely quantized inputs, through the not yet reconstructed
// units and the epilogue in FP, against the FP model's prediction: weight * KL(softmax(z_fp/T) || softmax(z_q/T)),
// averaged over samples (language models: over tokens).
torch::Tensor Reconstructor::prediction_loss(const UnitRun& u, const torch::Tensor& y_q, const torch::Tensor& idx) {
  UnitContext fp;
  torch::Tensor h = y_q;
  for (size_t k = u.index + 1; k < units_.size(); ++k) h = units_[k]->forward(h, fp);
  return recipe_.pd_weight * prediction_difference(fp_logits_.index_select(0, idx), model_.epilogue(h),
                                                   recipe_.pd_temperature);
}

// Layer-wise (AdaRound's original setting): layer i sees the input produced by the hardened layers before it
// on the quantized path, and matches its own FP output on the FP path.
void Reconstructor::train_layers(UnitRun& u) {
  for (auto& q : u.acts) if (q) q->set_training(false);
  auto& layers = u.unit.layers();
  const int64_t n_it = iters();
  for (size_t i = 0; i < layers.size(); ++i) {
    u.ctx.hard = true;
    u.ctx.fp_from = static_cast<int>(i);
    torch::Tensor xi_q = capture_input(u.unit, static_cast<int>(i), x_q_, &u.ctx);
    torch::Tensor xi_fp = capture_input(u.unit, static_cast<int>(i), x_fp_, nullptr);
    const QuantLayer& layer = layers[i];
    torch::Tensor yi_fp = chunked(xi_fp, [&](const torch::Tensor& x) { return layer.apply(x, layer.weight); });
    Rounder& r = *u.rounders[i];
    run_adam(r.parameters(), {}, n_it, recipe_, "layer \"" + layer.name + "\"",
             [&](int64_t it) {
               auto idx = sample();
               auto xin = qdrop_mix(xi_q.index_select(0, idx), xi_fp.index_select(0, idx), recipe_.qdrop);
               auto loss = lp_loss(layer.apply(xin, r.forward(false)), yi_fp.index_select(0, idx));
               auto reg = r.regularizer(it, n_it);
               (reg.defined() ? loss + reg : loss).backward();
               return loss.item<double>();
             },
             [&](int64_t it, double running) { progress_line(u, layer.name, it, running); });
  }
  u.ctx.fp_from = 1 << 30;
}

// Codes are what the last hard forward used; the layers now hold the dequantized weights and the state the
// codes and frozen activation grids.
void Reconstructor::harden(UnitRun& u) {
  auto& layers = u.unit.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    QuantizedTensor qt = u.rounders[i]->harden();
    torch::Tensor w = qt.dequantize().to(layers[i].weight.device());
    check_finite(w, "quantized weight of layer \"" + layers[i].name + "\"", "lower recon.lr");
    u.ctx.rounders[i] = nullptr;
    layers[i].weight = w.detach();
    state_.weights[layers[i].name] = std::move(qt);
  }
  const auto& sites = u.unit.act_sites();
  for (size_t j = 0; j < sites.size(); ++j) {
    if (!u.acts[j]) continue;
    u.acts[j]->set_training(false);
    for (auto& p : u.acts[j]->parameters()) p.detach_().requires_grad_(false);
    state_.acts[site_key(u.unit, sites[j])] = u.acts[j];
  }
  u.rounders.clear();
}

// Empirical bias correction (DFQ; methods.md): layer by layer, on its quantized-path inputs x (earlier layers
// already corrected), bias -= mean over samples and positions of layer(x, W_q) - layer(x, W_fp), per output channel:
// the rounding's mean output shift. Layers without a bias are left as they are.
void Reconstructor::correct_biases(UnitRun& u, const std::vector<torch::Tensor>& w_fp) {
  torch::NoGradGuard ng;
  auto& layers = u.unit.layers();
  QuantizedContext qctx(state_);
  qctx.begin_unit(u.unit);
  for (size_t i = 0; i < layers.size(); ++i) {
    QuantLayer& l = layers[i];
    if (!l.bias.defined()) continue;
    const torch::Tensor x = capture_input(u.unit, static_cast<int>(i), x_q_, &qctx);
    torch::Tensor sum = torch::zeros_like(l.bias, torch::kFloat64);
    int64_t count = 0;  // outputs per channel: samples x positions (or tokens)
    for (int64_t b = 0; b < x.size(0); b += kChunk) {
      const torch::Tensor xb = x.slice(0, b, std::min(b + kChunk, x.size(0)));
      torch::Tensor d = (l.apply(xb, l.weight) - l.apply(xb, w_fp[i])).to(torch::kFloat64);
      d = l.kind == LayerKind::Conv2d ? d.transpose(0, 1) : d.movedim(-1, 0);  // channels first
      d = d.reshape({d.size(0), -1});
      sum += d.sum(1);
      count += d.size(1);
    }
    l.bias = (l.bias - (sum / static_cast<double>(count)).to(l.bias.scalar_type())).detach();
  }
}

// Continues after the last unit a checkpoint holds; 0 (from the start) when there is none to resume.
size_t Reconstructor::resume(QuantizeReport& report) {
  if (!checkpoint_.resume || checkpoint_.path.empty() || !std::filesystem::exists(checkpoint_.path)) return 0;
  CheckpointState c = read_checkpoint(checkpoint_.path, model_, state_, fingerprint_);
  FQ_CHECK(c.units_done <= static_cast<int64_t>(num_units_), ConfigError, "checkpoint \"", checkpoint_.path, "\" holds ",
           c.units_done, " units but this run has ", num_units_, " -> delete it to start over");
  const torch::Device dev = x_q_.device();
  x_fp_ = c.x_fp.to(dev);
  x_q_ = c.x_q.to(dev);
  gen_.set_state(c.generator_state);
  report.units = c.reports;
  say(fmt::format("resuming after unit {}/{} from {}", c.units_done, num_units_, checkpoint_.path));
  return static_cast<size_t>(c.units_done);
}

void Reconstructor::save_checkpoint(size_t units_done, const QuantizeReport& report) {
  if (checkpoint_.path.empty()) return;
  CheckpointState c;
  c.units_done = static_cast<int64_t>(units_done);
  c.x_fp = x_fp_;
  c.x_q = x_q_;
  c.generator_state = gen_.get_state();
  c.reports = report.units;
  write_checkpoint(checkpoint_.path, model_, state_, fingerprint_, c);
}

// The next unit's inputs: the quantized unit on the quantized chain, the FP unit on the FP chain.
void Reconstructor::propagate(UnitRun& u) {
  QuantizedContext qctx(state_);
  qctx.begin_unit(u.unit);
  u.report.loss_end = probe(u, qctx);
  x_q_ = forward_all(u.unit, x_q_, qctx);
  x_fp_ = u.y_chain;
}

}  // namespace

QuantizeReport quantize_model(ModelAdapter& model, const torch::Tensor& calib_inputs, const Recipe& recipe,
                              QuantState& state, const ProgressFn& progress, int64_t max_units,
                              const CheckpointOptions& checkpoint) {
  recipe.validate();
  return Reconstructor(model, recipe, state, progress, checkpoint).run(calib_inputs, max_units);
}

}  // namespace flexquant
