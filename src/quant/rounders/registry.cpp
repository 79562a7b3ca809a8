// Method registry: name -> MethodInfo (what the method needs, its factory). The built-ins are inserted when
// the registry is first used (a static registrar in a static library would be dropped by the linker);
// register_method() adds more, from inside or outside the library.
#include <map>
#include <mutex>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, MethodInfo> entries;
  Registry() {
    auto add = [&](MethodInfo m) { entries[m.name] = std::move(m); };
    add({"rtn", "round-to-nearest on the initial grid (the baseline; nothing learned)", {}, rounders::make_rtn, {}});
    add({"adaround", "AdaRound: learned up/down rounding with an annealed regulariser (methods.md §2)",
         {/*training=*/true, false}, rounders::make_adaround, {}});
    add({"flexround", "FlexRound: learned element-wise division and common grid (methods.md §1.1)",
         {/*training=*/true, false}, rounders::make_flexround, {}});
    add({"lrq", "LRQ: FlexRound with a low-rank S2 (methods.md §1.6)", {/*training=*/true, false},
         rounders::make_lrq, {}});
    add({"nupes", "NUPES: FlexRound on a power grid sign(q)|q|^(1/a) with the exponent a learned too (methods.md §5)",
         {/*training=*/true, false}, rounders::make_nupes,
         {{"nupes.a_init", 0, "Initial exponent a of the transform |w|^a; 0 = search {1, 0.9, ..., 0.5} for the least "
                              "round-to-nearest error per layer (PowerQuant). a = 1 with learn_a = 0 is FlexRound on "
                              "the same integer grid (stored as pow<b>_a1_full)."},
          {"nupes.learn_a", 1, "Learn a jointly with FlexRound's divisors (1) or keep it fixed (0)."},
          {"nupes.a_rate", 0.1, "a = exp(a_rate * theta) with theta trained by Adam: the exponent's log moves about "
                              "a_rate * recon.lr per step."}}});
    add({"gptq", "GPTQ: column-wise error feedback through the input Hessian (methods.md §7.2)",
         {false, /*hessian=*/true}, rounders::make_gptq, {}});
    MethodInfo mp{"multipoint", "Multipoint: each output channel a sum of low-bit points fitted greedily to the residual, the "
                       "points per channel chosen from the output error under a budget (methods.md §6)",
         {false, /*hessian=*/true}, rounders::make_multipoint,
         {{"multipoint.points", 1.5, "Points per output channel, averaged over each layer's channels: the layer's "
                                     "budget (spent only while a point cuts output error). 1 = round-to-nearest. Code "
                                     "bits per weight = weight.bits x points."},
          {"multipoint.max_points", 4, "Most points one output channel may take (integer, 1..8)."}}};
    mp.single_grid = false;
    add(std::move(mp));
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

torch::Tensor Rounder::regularizer(int64_t, int64_t) { return torch::zeros({}); }

namespace rounders {

void HessianRounder::init(const torch::Tensor&, const WeightQuantSpec&, const QParams&) {
  throw ConfigError(name() + " needs the layer's input Hessian -> call init(w, spec, qp, stats) with stats.hessian (the "
                    "engine does this because " + name() + "'s registry entry sets needs.hessian)");
}

void HessianRounder::check_stats(const LayerStats& stats) const {
  FQ_CHECK(stats.hessian.defined(), ConfigError, name(), ": no Hessian in the layer statistics -> the engine must "
           "collect one (MethodNeeds::hessian)");
}

void HessianRounder::set_codes(QuantizedTensor q, const torch::Device& device) {
  q_ = std::move(q);
  w_ = q_.dequantize().to(device);
}

torch::Tensor HessianRounder::forward(bool) {
  FQ_INTERNAL_ASSERT(w_.defined(), name() + " rounder used before init()");
  return w_;
}

QuantizedTensor HessianRounder::harden() {
  FQ_INTERNAL_ASSERT(w_.defined(), name() + " rounder used before init()");
  return q_;
}

}  // namespace rounders

std::vector<MethodInfo> methods() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<MethodInfo> out;
  for (auto& [name, m] : r.entries) out.push_back(m);
  return out;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (auto& m : methods()) names.push_back(m.name);
  return names;
}

double RounderOptions::option(const std::string& key) const {
  if (auto it = extra.find(key); it != extra.end()) return it->second;
  for (const MethodInfo& m : methods())
    for (const MethodOption& o : m.options)
      if (o.key == key) return o.default_value;  // never set: the declared default
  throw ConfigError("method option \"" + key + "\" is not declared by any registered method -> hint: list it in "
                    "MethodInfo::options when registering the method");
}

void register_method(MethodInfo info) {
  FQ_CHECK(!info.name.empty() && info.make, ConfigError, "register_method needs a name and a factory");
  for (const MethodOption& o : info.options)
    FQ_CHECK(o.key.rfind(info.name + ".", 0) == 0 && o.key.size() > info.name.size() + 1, ConfigError,
             "method \"", info.name, "\": option \"", o.key, "\" is outside its own section -> allowed: \"",
             info.name, ".<option>\"");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.entries[info.name] = std::move(info);
}

const MethodInfo& method_info(const std::string& name) {
  auto& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.entries.find(name);
    if (it != r.entries.end()) return it->second;  // entries are never erased: the reference stays valid
  }
  std::string list;
  for (auto& n : method_names()) list += (list.empty() ? "" : " | ") + n;
  throw ConfigError("method \"" + name + "\" is not known -> allowed: " + list +
                    " (or a method added with register_method)");
}

namespace {

// Grids with an offset (k-quants with mins: value = scale * level - offset) as every method sees them unless it
// takes the offset itself (Rounder::takes_offset): the method rounds w + offset on the plain grid (as ggml rounds
// (x + m) / d) and the offset is taken off again. Transparent for grids without one.
class OffsetGrid : public Rounder {
 public:
  explicit OffsetGrid(std::unique_ptr<Rounder> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) override {
    if (inner_->takes_offset()) return inner_->init(w, spec, qp);
    inner_->init(shift(w, spec, qp), spec, plain(qp));
  }
  void init(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp, const LayerStats& st) override {
    if (inner_->takes_offset()) return inner_->init(w, spec, qp, st);
    inner_->init(shift(w, spec, qp), spec, plain(qp), st);
  }
  torch::Tensor forward(bool hard) override {
    torch::Tensor v = inner_->forward(hard);
    return off_.defined() ? v - off_ : v;
  }
  std::vector<torch::Tensor> parameters() override { return inner_->parameters(); }
  torch::Tensor regularizer(int64_t step, int64_t total) override { return inner_->regularizer(step, total); }
  QuantizedTensor harden() override {
    QuantizedTensor t = inner_->harden();
    if (!inner_->takes_offset()) t.qparams.offset = offset_;
    return t;
  }
  double default_lr() const override { return inner_->default_lr(); }
  bool takes_offset() const override { return true; }

 private:
  torch::Tensor shift(const torch::Tensor& w, const WeightQuantSpec& spec, const QParams& qp) {
    offset_ = qp.offset;
    if (!offset_.defined()) return w;
    off_ = expand_to_weight(offset_.to(w.options()), w.sizes(), spec);
    return w + off_;
  }
  static QParams plain(QParams qp) {
    qp.offset = torch::Tensor();
    return qp;
  }
  std::unique_ptr<Rounder> inner_;
  torch::Tensor offset_, off_;
};

}  // namespace

std::unique_ptr<Rounder> make_rounder(const std::string& name, const RounderOptions& opts) {
  return std::make_unique<OffsetGrid>(method_info(name).make(opts));
}

}  // namespace flexquant
