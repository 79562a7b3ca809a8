// Block-wise reconstruction engine (BRECQ order, QDrop mixing, FlexRound/AdaRound/LRQ rounders, LSQ
// activation steps). For each unit k, in forward order (methods.md §10.5):
//   targets  Y_fp = Unit_k^FP(X_fp)            (FP chain)
//   inputs   X_q  from units < k already hardened (activation quantizers on)
//   minimise lp_loss(Unit_k^Q(mix(X_q, X_fp)), Y_fp) + regulariser, Adam, cosine schedule
//   harden, then X_q <- Unit_k^Q(X_q), X_fp <- Y_fp.
#include "flexquant/reconstruct.h"

#include <fmt/format.h>
#include <torch/optim/adam.h>
#include <torch/autograd.h>

#include <cmath>

#include "flexquant/error.h"
#include "flexquant/gptq.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace {

constexpr int64_t kChunk = 128;  // samples per no-grad forward chunk

// Sum over dim 1, mean over the rest (BRECQ/QDrop lp_loss, p = 2; methods.md §10.7).
torch::Tensor lp_loss(const torch::Tensor& y, const torch::Tensor& target) {
  auto d = (y - target).pow(2);
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

// Bits of an activation site (32 = off), from the role its adapter gave it. A classifier's input stays at
// first_last_bits like the classifier (QDrop).
int site_bits(const ActSite& s, const Recipe& r) {
  if (s.role == SiteRole::KvCache) return r.kv_bits;
  if (r.act_bits >= 32) return 32;
  if (s.role == SiteRole::ClassifierInput && r.first_last_bits > 0) return std::max(r.act_bits, r.first_last_bits);
  return r.act_bits;
}

// Context used while training unit k: weights from the rounders, activations through LSQ quantizers.
class TrainContext : public UnitContext {
 public:
  std::vector<Rounder*> rounders;
  std::vector<ActQuantizer*> acts;  // null where the site is not quantized
  bool hard = false;
  bool dynamic_acts = true;  // false: per-token (dynamic) quantizers pass x through, for weight-only training
  bool calibrating = false;
  std::vector<bool> calibrated;
  int fp_from = 1 << 30;  // layers with index >= fp_from run FP weights (layer-wise input capture)
  int capture = -1;       // record the input of this layer
  std::vector<torch::Tensor> captured;
  torch::Tensor weight(const QuantLayer& layer, int i) override {
    return i >= fp_from ? layer.weight : rounders.at(i)->forward(hard);
  }
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) override {
    if (i == capture) captured.push_back(x.detach());
  }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    ActQuantizer* q = acts.at(j);
    if (!q || (!dynamic_acts && q->spec().per_token)) return x;
    if (calibrating && !calibrated[j]) {
      q->calibrate(x.detach());
      calibrated[j] = true;
    }
    return q->forward(x);
  }
};

// A rounder whose codes were decided elsewhere (GPTQ): no parameters, forward = the dequantized codes.
class FixedRounder : public Rounder {
 public:
  explicit FixedRounder(QuantizedTensor q) : q_(std::move(q)), w_(q_.dequantize()) {}
  std::string name() const override { return "fixed"; }
  void init(const torch::Tensor&, const WeightQuantSpec&, const QParams&) override {}
  torch::Tensor forward(bool) override { return w_; }
  std::vector<torch::Tensor> parameters() override { return {}; }
  QuantizedTensor harden() override { return q_; }

 private:
  QuantizedTensor q_;
  torch::Tensor w_;
};

// FP unit run that records the input of one layer.
class CaptureContext : public UnitContext {
 public:
  explicit CaptureContext(int layer) : layer_(layer) {}
  std::vector<torch::Tensor> captured;
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) override {
    if (i == layer_) captured.push_back(x.detach());
  }

 private:
  int layer_;
};

// Adam over the rounding parameters (group 0, recipe.lr with its schedule) and the LSQ steps (group 1,
// act.lr, cosine). step_loss(it) returns {reconstruction loss, regulariser (may be undefined)}.
void run_adam(const std::vector<torch::Tensor>& w_params, const std::vector<torch::Tensor>& a_params, int64_t iters,
              const Recipe& recipe, const std::string& what,
              const std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t)>& step_loss,
              const std::function<void(int64_t, double)>& report) {
  if (iters <= 0 || (w_params.empty() && a_params.empty())) return;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!w_params.empty()) groups.emplace_back(w_params, std::make_unique<torch::optim::AdamOptions>(recipe.lr));
  if (!a_params.empty()) groups.emplace_back(a_params, std::make_unique<torch::optim::AdamOptions>(recipe.act_lr));
  torch::optim::Adam opt(groups, torch::optim::AdamOptions(recipe.lr));
  const int64_t report_every = std::max<int64_t>(1, iters / 10);
  double running = 0;
  for (int64_t it = 0; it < iters; ++it) {
    // Cosine to 0 over exactly `iters` steps (FlexRound); activation steps always cosine (QDrop).
    double cosf = 0.5 * (1 + std::cos(M_PI * it / iters));
    size_t g = 0;
    if (!w_params.empty())
      static_cast<torch::optim::AdamOptions&>(opt.param_groups()[g++].options())
          .lr(recipe.lr_schedule == "cosine" ? recipe.lr * cosf : recipe.lr);
    if (!a_params.empty())
      static_cast<torch::optim::AdamOptions&>(opt.param_groups()[g].options()).lr(recipe.act_lr * cosf);
    opt.zero_grad();
    auto [loss, reg] = step_loss(it);
    (reg.defined() ? loss + reg : loss).backward();
    opt.step();
    double lv = loss.item<double>();
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

std::vector<std::vector<WeightQuantSpec>> layer_specs(ModelAdapter& model, const Recipe& recipe) {
  auto units = model.units();
  std::vector<std::vector<WeightQuantSpec>> specs;
  for (size_t k = 0; k < units.size(); ++k) {
    auto& layers = units[k]->layers();
    std::vector<WeightQuantSpec> s;
    for (const QuantLayer& l : layers) {
      const bool edge = l.role != LayerRole::Hidden;  // the stem or the classifier, as the adapter says
      s.push_back(recipe.weight_spec(edge && recipe.first_last_bits > 0 ? recipe.first_last_bits : 0));
    }
    specs.push_back(std::move(s));
  }
  return specs;
}

QuantizeReport quantize_model(ModelAdapter& model, const torch::Tensor& calib_inputs, const Recipe& recipe,
                              QuantState& state, const ProgressFn& progress, int64_t max_units) {
  recipe.validate();
  Stopwatch total;
  QuantizeReport report;
  report.calib_samples = calib_inputs.size(0);
  auto say = [&](const std::string& line) {
    if (progress) progress(line);
    else log_info(line);
  };
  auto units = model.units();
  FQ_CHECK(!units.empty(), ModelError, "model \"", model.arch(), "\" has no reconstruction units");
  FQ_CHECK(max_units >= 0, ConfigError, "max_units ", max_units, " -> allowed >= 0 (0 = all units)");
  if (max_units > 0 && max_units < static_cast<int64_t>(units.size())) units.resize(max_units);
  const auto specs = layer_specs(model, recipe);
  const bool learned = recipe.method == "adaround" || recipe.method == "flexround" || recipe.method == "lrq";
  const std::string rounder_name = recipe.method;

  torch::Tensor x_fp = chunked(calib_inputs, [&](const torch::Tensor& x) { return model.prologue(x); });
  torch::Tensor x_q = x_fp;
  const int64_t n = x_fp.size(0);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(recipe.seed);

  for (size_t k = 0; k < units.size(); ++k) {
    Unit& unit = *units[k];
    const bool mem_window = reset_peak_rss();
    Stopwatch sw;
    torch::manual_seed(recipe.seed + k);  // QDrop masks and LRQ init: reproducible per unit
    UnitContext fp_ctx;
    torch::Tensor y_fp = chunked(x_fp, [&](const torch::Tensor& x) { return unit.forward(x, fp_ctx); });

    // Rounders start at round-to-nearest on the initial grid.
    auto& layers = unit.layers();
    std::vector<std::unique_ptr<Rounder>> rounders;
    TrainContext ctx;
    for (auto& l : layers)
      check_finite(l.weight, "weight of layer \"" + l.name + "\"", "the model file is corrupt");
    if (recipe.method == "gptq") {
      // Hessians from the quantized-path inputs of this unit (FP weights inside it, as GPTQ's default
      // non-true-sequential mode), then column-wise error feedback per layer.
      HessianCollector hc;
      chunked(x_q, [&](const torch::Tensor& x) { return unit.forward(x, hc); });
      GptqOptions go;
      go.damp = recipe.gptq_damp;
      go.act_order = recipe.gptq_act_order;
      go.block_size = recipe.gptq_block_size;
      for (size_t i = 0; i < layers.size(); ++i) {
        auto r = std::make_unique<FixedRounder>(
            gptq_quantize(layers[i].weight, hc.at(layers[i].name).hessian(), specs[k][i], go));
        ctx.rounders.push_back(r.get());
        rounders.push_back(std::move(r));
      }
    } else {
      for (size_t i = 0; i < layers.size(); ++i) {
        auto r = make_rounder(rounder_name, recipe.rounder);
        r->init(layers[i].weight, specs[k][i], init_qparams(layers[i].weight, specs[k][i]));
        ctx.rounders.push_back(r.get());
        rounders.push_back(std::move(r));
      }
    }
    const auto& sites = unit.act_sites();
    std::vector<std::shared_ptr<ActQuantizer>> acts;
    for (const ActSite& s : sites) {
      int bits = site_bits(s, recipe);
      std::shared_ptr<ActQuantizer> q;
      if (bits < 32) {
        ActQuantSpec as;
        as.bits = bits;
        as.per_token = recipe.act_per_token || s.role == SiteRole::KvCache;
        q = std::make_shared<ActQuantizer>(as, s.non_negative);
      }
      acts.push_back(q);
      ctx.acts.push_back(q.get());
    }
    // Static activation grids from (up to) 256 quantized-path inputs, weights at their initial grid.
    if (std::any_of(acts.begin(), acts.end(), [](auto& q) { return q != nullptr; })) {
      torch::NoGradGuard ng;
      ctx.calibrating = true;
      ctx.hard = true;
      ctx.calibrated.assign(acts.size(), false);
      unit.forward(x_q.slice(0, 0, std::min<int64_t>(n, 256)), ctx);
      ctx.calibrating = false;
    }

    // Loss of the starting point on a fixed probe batch (for the report).
    const int64_t probe_n = std::min<int64_t>(n, std::max<int64_t>(recipe.batch, 64));
    auto probe_loss = [&]() {
      torch::NoGradGuard ng;
      ctx.hard = true;
      for (auto& q : acts) if (q) q->set_training(false);
      return lp_loss(unit.forward(x_q.slice(0, 0, probe_n), ctx), y_fp.slice(0, 0, probe_n)).item<double>();
    };
    UnitReport ur;
    ur.name = unit.name();
    ur.method = recipe.method;
    ur.loss_start = probe_loss();

    // Round-to-nearest is the baseline: grids from calibration only, nothing trained.
    const int64_t iters = learned ? recipe.iters : 0;
    const int64_t batch = std::min(recipe.batch, n);
    auto progress_line = [&](const std::string& what, int64_t it, double running) {
      double el = sw.seconds();
      say(fmt::format("[{:>2}/{}] {:<10} {} it {:>5}/{} loss {:.3e} (start {:.3e}) {} eta {}", k + 1, units.size(),
                      what, recipe.method, it, iters, running, ur.loss_start, format_duration(el),
                      format_duration(el / it * (iters - it))));
    };
    auto sample = [&]() { return torch::randint(n, {batch}, gen, torch::kLong).to(x_q.device()); };
    Stopwatch train_sw;
    if (recipe.recon_unit == "block") {
      std::vector<torch::Tensor> w_params, a_params;
      for (auto& r : rounders) for (auto& p : r->parameters()) w_params.push_back(p);
      for (auto& q : acts) if (q) for (auto& p : q->parameters()) a_params.push_back(p);
      ctx.hard = false;
      for (auto& q : acts) if (q) q->set_training(true, recipe.qdrop);
      // Dynamic per-token quantizers learn nothing; with them off the rounders fit the weights alone
      // (FlexRound's released W4A8 code), which measured better than training through their noise.
      ctx.dynamic_acts = recipe.dynamic_acts_in_loop;
      run_adam(w_params, a_params, iters, recipe, "unit \"" + unit.name() + "\"",
               [&](int64_t it) {
                 auto idx = sample();
                 torch::Tensor xin = x_q.index_select(0, idx);
                 if (recipe.qdrop > 0) {  // QDrop: element-wise mix of quantized and FP inputs
                   auto keep_fp = torch::rand_like(xin) < recipe.qdrop;
                   xin = torch::where(keep_fp, x_fp.index_select(0, idx), xin);
                 }
                 auto loss = lp_loss(unit.forward(xin, ctx), y_fp.index_select(0, idx));
                 torch::Tensor reg;
                 for (auto& r : rounders) {
                   auto rr = r->regularizer(it, iters);
                   reg = reg.defined() ? reg + rr : rr;
                 }
                 return std::make_pair(loss, reg);
               },
               [&](int64_t it, double running) { progress_line(unit.name(), it, running); });
      ctx.dynamic_acts = true;
    } else {
      // Layer-wise (AdaRound's original setting): layer i sees the input produced by the hardened layers
      // before it on the quantized path, and matches its own FP output on the FP path.
      for (auto& q : acts) if (q) q->set_training(false);
      for (size_t i = 0; i < layers.size(); ++i) {
        ctx.hard = true;
        ctx.fp_from = static_cast<int>(i);
        ctx.capture = static_cast<int>(i);
        ctx.captured.clear();
        chunked(x_q, [&](const torch::Tensor& x) { return unit.forward(x, ctx); });
        torch::Tensor xi_q = torch::cat(ctx.captured, 0);
        ctx.captured.clear();
        CaptureContext fpcap(static_cast<int>(i));
        chunked(x_fp, [&](const torch::Tensor& x) { return unit.forward(x, fpcap); });
        torch::Tensor xi_fp = torch::cat(fpcap.captured, 0);
        const QuantLayer& layer = layers[i];
        torch::Tensor yi_fp = chunked(xi_fp, [&](const torch::Tensor& x) { return layer.apply(x, layer.weight); });
        Rounder& r = *rounders[i];
        run_adam(r.parameters(), {}, iters, recipe, "layer \"" + layer.name + "\"",
                 [&](int64_t it) {
                   auto idx = sample();
                   torch::Tensor xin = xi_q.index_select(0, idx);
                   if (recipe.qdrop > 0) {
                     auto keep_fp = torch::rand_like(xin) < recipe.qdrop;
                     xin = torch::where(keep_fp, xi_fp.index_select(0, idx), xin);
                   }
                   auto loss = lp_loss(layer.apply(xin, r.forward(false)), yi_fp.index_select(0, idx));
                   return std::make_pair(loss, r.regularizer(it, iters));
                 },
                 [&](int64_t it, double running) { progress_line(layer.name, it, running); });
      }
      ctx.fp_from = 1 << 30;
      ctx.capture = -1;
    }
    ur.iters = iters;
    const double train_seconds = train_sw.seconds();

    // Harden: codes are what the last hard forward used; layers now hold the dequantized weights.
    for (size_t i = 0; i < layers.size(); ++i) {
      QuantizedTensor qt = rounders[i]->harden();
      torch::Tensor w = qt.dequantize().to(layers[i].weight.device());
      check_finite(w, "quantized weight of layer \"" + layers[i].name + "\"", "lower recon.lr");
      ctx.rounders[i] = nullptr;
      layers[i].weight = w.detach();
      state.weights[layers[i].name] = std::move(qt);
    }
    for (size_t j = 0; j < sites.size(); ++j) {
      if (!acts[j]) continue;
      acts[j]->set_training(false);
      for (auto& p : acts[j]->parameters()) p.detach_().requires_grad_(false);
      state.acts[site_key(unit, sites[j])] = acts[j];
    }
    rounders.clear();

    QuantizedContext qctx(state);
    qctx.begin_unit(unit);
    {
      torch::NoGradGuard ng;
      ur.loss_end = lp_loss(unit.forward(x_q.slice(0, 0, probe_n), qctx), y_fp.slice(0, 0, probe_n)).item<double>();
    }
    x_q = chunked(x_q, [&](const torch::Tensor& x) { return unit.forward(x, qctx); });
    x_fp = y_fp;
    ur.seconds = sw.seconds();
    ur.ms_per_iter = iters > 0 ? 1000.0 * train_seconds / iters : 0;
    ur.peak_rss_bytes = mem_window ? window_peak_rss_bytes() : 0;
    say(fmt::format("[{:>2}/{}] {:<10} done: loss {:.3e} -> {:.3e}, {}", k + 1, units.size(), unit.name(),
                    ur.loss_start, ur.loss_end, format_duration(ur.seconds)));
    report.units.push_back(ur);
  }
  report.seconds = total.seconds();
  report.peak_rss_bytes = peak_rss_bytes();
  return report;
}

}  // namespace flexquant
