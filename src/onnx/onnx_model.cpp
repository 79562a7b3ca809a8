// OnnxModel: an ONNX graph partitioned into reconstruction units (conventions in include/flexquant/onnx_model.h).
#include "flexquant/onnx_model.h"

#include <torch/nn/functional/padding.h>

#include <algorithm>
#include <set>

#include "flexquant/cnn.h"
#include "flexquant/error.h"
#include "flexquant/quantizer.h"
#include "onnx_internal.h"

namespace flexquant {
namespace {

const std::set<std::string> kActivationOps = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                                              "Identity"};
// Ops whose output is >= 0 whenever their computed inputs are.
const std::set<std::string> kSignPreserving = {"MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                                               "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice", "Pad",
                                               "ReduceMean", "Concat", "Add", "Mul"};

// How a layer node is run: ctx.run on (optionally explicitly padded) input.
struct LayerCall {
  int layer = -1;               // index into the unit's layers, -1: a plain node
  // Conv whose pads the layer's symmetric `padding` cannot hold (asymmetric, or auto_pad SAME_*, which depends on
  // the input size): the node's own pads are applied explicitly before the layer.
  bool explicit_pads = false;
};

std::string strip_suffix(std::string s, const std::string& suffix) {
  if (s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0)
    s.resize(s.size() - suffix.size());
  return s;
}

// A readable layer name: the weight's initializer name when the exporter kept the module path ("layer1.0.conv1"),
// else the node's scope ("/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1", "/Conv_17" -> "Conv_17"), else the
// node name.
std::string layer_name(const OnnxNode& n) {
  const std::string& w = n.inputs.at(1);
  if (w.find("::") == std::string::npos && w.find('/') == std::string::npos && w.size() > 7 &&
      w.compare(w.size() - 7, 7, ".weight") == 0)
    return strip_suffix(w, ".weight");
  if (!n.name.empty() && n.name[0] == '/') {
    std::vector<std::string> parts;
    size_t b = 1;
    for (size_t e; (e = n.name.find('/', b)) != std::string::npos; b = e + 1) parts.push_back(n.name.substr(b, e - b));
    // PyTorch scopes hold each module's own name; the innermost one with its parents' prefix is the full path.
    if (parts.size() >= 2 && parts.back().find('.') == std::string::npos && parts[parts.size() - 2].find('.') != std::string::npos)
      return parts[parts.size() - 2] + "." + parts.back();
    if (!parts.empty()) return parts.back();
    return n.name.substr(1);  // "/Conv_17": an exporter that kept no module scopes
  }
  return n.name;
}

// Common dotted prefix of names ("layer1.0.conv1", "layer1.0.conv2" -> "layer1.0"); the name itself for one.
std::string common_prefix(const std::vector<std::string>& names) {
  if (names.size() == 1) return names[0];
  std::string p = names[0];
  for (const auto& n : names) {
    size_t k = 0;
    while (k < p.size() && k < n.size() && p[k] == n[k]) ++k;
    p.resize(k);
  }
  while (!p.empty() && p.back() != '.') p.pop_back();
  if (!p.empty()) p.pop_back();
  return p;
}

int64_t same_pair(const std::vector<int64_t>& v, const std::string& what, const OnnxNode& n, const std::string& path) {
  FQ_CHECK(v.size() == 2 && v[0] == v[1], ModelError, "\"", path, "\": Conv node \"", n.name, "\" has ", what,
           " that differ between height and width -> supported: square ", what, " (quantizable 2-D convs)");
  return v[0];
}

}  // namespace

// One unit: a contiguous run of graph nodes, entered by one tensor and left by one.
class GraphUnit : public Unit {
 public:
  std::string name() const override { return name_; }
  std::vector<QuantLayer>& layers() override { return layers_; }
  const std::vector<ActSite>& act_sites() const override { return sites_; }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override;

  std::string name_, input_, output_;
  std::vector<OnnxNode> nodes_;
  std::vector<LayerCall> calls_;  // per node
  std::vector<QuantLayer> layers_;
  std::vector<ActSite> sites_;
  std::map<std::string, int> site_of_;  // tensor -> site index
  const OnnxGraph* graph_ = nullptr;

 private:
  torch::Tensor run_layer(const LayerCall& c, const OnnxNode& n, const torch::Tensor& x, UnitContext& ctx);
};

torch::Tensor GraphUnit::run_layer(const LayerCall& c, const OnnxNode& n, const torch::Tensor& x, UnitContext& ctx) {
  torch::Tensor h = x;
  if (c.explicit_pads) {
    const QuantLayer& l = layers_[c.layer];
    const auto pads =
        onnx_window_pads(n, x, {l.weight.size(2), l.weight.size(3)}, {l.stride, l.stride}, {l.dilation, l.dilation});
    h = torch::constant_pad_nd(x, {pads[1], pads[3], pads[0], pads[2]}, 0.0);
  }
  return ctx.run(layers_[c.layer], c.layer, h);
}

torch::Tensor GraphUnit::forward(const torch::Tensor& x, UnitContext& ctx) {
  std::map<std::string, torch::Tensor> env{{input_, x}};
  auto value = [&](const std::string& s) -> torch::Tensor {
    if (s.empty()) return torch::Tensor();
    if (auto it = env.find(s); it != env.end()) return it->second;
    if (auto it = graph_->constants.find(s); it != graph_->constants.end()) return it->second.to(x.device());
    throw ModelError("\"" + graph_->path + "\": unit " + name_ + " reads tensor \"" + s + "\" that it does not produce");
  };
  for (size_t k = 0; k < nodes_.size(); ++k) {
    const OnnxNode& n = nodes_[k];
    std::vector<torch::Tensor> outs;
    if (calls_[k].layer >= 0) {
      outs.push_back(run_layer(calls_[k], n, value(n.inputs[0]), ctx));
    } else {
      std::vector<torch::Tensor> ins;
      for (const auto& s : n.inputs) ins.push_back(value(s));
      outs = onnx_run_node(n, ins, graph_->opset);
    }
    for (size_t i = 0; i < n.outputs.size() && i < outs.size(); ++i) {
      auto site = site_of_.find(n.outputs[i]);
      env[n.outputs[i]] = site == site_of_.end() ? outs[i] : ctx.act(sites_[site->second], site->second, outs[i]);
    }
  }
  return value(output_);
}

// Builds an OnnxModel from a loaded graph: layers, BN folding, cut points, units and sites.
class OnnxModelBuilder {
 public:
  explicit OnnxModelBuilder(OnnxModel& m) : m_(m), g_(m.graph_), nodes_(g_.nodes) {}
  void build();

 private:
  bool is_const(const std::string& s) const { return s.empty() || g_.constants.count(s); }
  std::map<std::string, std::vector<size_t>> consumers() const;
  void find_layers();
  void fold_batchnorms();
  std::vector<std::pair<size_t, size_t>> segments() const;
  void make_units();
  void add_unit(size_t begin, size_t end);
  bool non_negative(const OnnxNode& n) const;

  OnnxModel& m_;
  const OnnxGraph& g_;
  std::vector<OnnxNode> nodes_;  // the graph's nodes with BatchNorms folded; graph() stays as loaded
  std::map<size_t, QuantLayer> layer_at_;  // node index -> its layer
  std::map<size_t, LayerCall> call_at_;
  std::map<std::string, bool> nonneg_;
  std::string path() const { return g_.path; }
};

std::map<std::string, std::vector<size_t>> OnnxModelBuilder::consumers() const {
  std::map<std::string, std::vector<size_t>> c;
  for (size_t k = 0; k < nodes_.size(); ++k)
    for (const auto& s : nodes_[k].inputs)
      if (!is_const(s)) c[s].push_back(k);
  return c;
}

void OnnxModelBuilder::find_layers() {
  for (size_t k = 0; k < nodes_.size(); ++k) {
    const OnnxNode& n = nodes_[k];
    if (n.inputs.size() < 2 || !g_.constants.count(n.inputs[1]) || is_const(n.inputs[0])) continue;
    torch::Tensor w = g_.constants.at(n.inputs[1]).to(torch::kFloat);
    QuantLayer l;
    l.name = layer_name(n);
    if (m_.layer_sources_.count(l.name)) l.name += "_" + std::to_string(k);  // exporters may reuse scopes
    OnnxModel::LayerSource src{n.name, n.inputs[1], false, ""};
    LayerCall call;
    if (n.op == "Conv" && w.dim() == 4) {
      l.kind = LayerKind::Conv2d;
      l.weight = w.clone();
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) l.bias = g_.constants.at(n.inputs[2]).to(torch::kFloat).clone();
      l.stride = same_pair(n.attr_ints("strides", {1, 1}), "strides", n, path());
      l.dilation = same_pair(n.attr_ints("dilations", {1, 1}), "dilations", n, path());
      l.groups = n.attr_i("group", 1);
      const std::string auto_pad = n.attr_s("auto_pad", "NOTSET");
      const auto pads = n.attr_ints("pads", {0, 0, 0, 0});
      const bool symmetric = pads.size() == 4 && std::all_of(pads.begin(), pads.end(), [&](int64_t p) { return p == pads[0]; });
      if (auto_pad == "NOTSET" && symmetric) l.padding = pads[0];
      else call.explicit_pads = auto_pad != "VALID";
    } else if (n.op == "Gemm" && w.dim() == 2 && n.attr_i("transA", 0) == 0) {
      src.transposed = n.attr_i("transB", 0) == 0;
      l.weight = (src.transposed ? w.t() : w).contiguous() * n.attr_f("alpha", 1.f);
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
        torch::Tensor c = g_.constants.at(n.inputs[2]).to(torch::kFloat) * n.attr_f("beta", 1.f);
        FQ_CHECK(c.numel() == l.weight.size(0), ModelError, "\"", path(), "\": Gemm node \"", n.name, "\" has a bias C of ",
                 c.numel(), " values for ", l.weight.size(0), " outputs -> supported: one bias per output");
        l.bias = c.reshape({-1}).clone();
      }
    } else if (n.op == "MatMul" && w.dim() == 2) {
      src.transposed = true;
      l.weight = w.t().contiguous();
    } else {
      continue;
    }
    check_weight_finite(l.weight, "\"" + path() + "\": weight of node \"" + n.name + "\"");
    layer_at_[k] = std::move(l);
    call_at_[k] = call;
    m_.layer_sources_[layer_at_[k].name] = src;
  }
}

// Conv -> BatchNormalization where the BN is the conv's only consumer: the BN goes into the conv's weight and bias.
void OnnxModelBuilder::fold_batchnorms() {
  auto cons = consumers();
  std::vector<bool> drop(nodes_.size(), false);
  for (size_t k = 0; k < nodes_.size(); ++k) {
    const OnnxNode& bn = nodes_[k];
    if (bn.op != "BatchNormalization" || bn.outputs.size() != 1) continue;
    bool params = true;
    for (size_t i = 1; i < 5; ++i) params = params && i < bn.inputs.size() && g_.constants.count(bn.inputs[i]);
    auto c = cons.find(bn.inputs[0]);
    if (!params || c == cons.end() || c->second.size() != 1) continue;
    auto conv = std::find_if(layer_at_.begin(), layer_at_.end(),
                             [&](auto& kv) { return nodes_[kv.first].outputs[0] == bn.inputs[0]; });
    if (conv == layer_at_.end() || conv->second.kind != LayerKind::Conv2d) continue;
    QuantLayer& l = conv->second;
    auto f = [&](size_t i) { return g_.constants.at(bn.inputs[i]).to(torch::kFloat); };
    FoldedConv fc = fold_batchnorm(l.weight, l.bias, f(1), f(2), f(3), f(4), bn.attr_f("epsilon", 1e-5f));
    l.weight = fc.weight;
    l.bias = fc.bias;
    l.bn = fc.bn;
    nodes_[conv->first].outputs[0] = bn.outputs[0];
    m_.layer_sources_[l.name].folded_bn = bn.name;
    drop[k] = true;
  }
  std::vector<OnnxNode> kept;
  std::map<size_t, QuantLayer> layers;
  std::map<size_t, LayerCall> calls;
  for (size_t k = 0; k < nodes_.size(); ++k) {
    if (drop[k]) continue;
    if (layer_at_.count(k)) {
      layers[kept.size()] = std::move(layer_at_[k]);
      calls[kept.size()] = call_at_[k];
    }
    kept.push_back(std::move(nodes_[k]));
  }
  nodes_ = std::move(kept);
  layer_at_ = std::move(layers);
  call_at_ = std::move(calls);
}

// [begin, end) node ranges between single-tensor cut points.
std::vector<std::pair<size_t, size_t>> OnnxModelBuilder::segments() const {
  std::map<std::string, size_t> last_use;
  for (size_t k = 0; k < nodes_.size(); ++k)
    for (const auto& s : nodes_[k].inputs)
      if (!is_const(s)) last_use[s] = k;
  for (const auto& o : g_.outputs) last_use[o] = nodes_.size();
  std::set<std::string> live{g_.inputs.at(0)};
  std::vector<std::pair<size_t, size_t>> segs;
  size_t begin = 0;
  for (size_t k = 0; k < nodes_.size(); ++k) {
    for (const auto& o : nodes_[k].outputs)
      if (last_use.count(o)) live.insert(o);
    for (auto it = live.begin(); it != live.end();) it = last_use[*it] <= k ? live.erase(it) : std::next(it);
    if (live.size() == 1 || k + 1 == nodes_.size()) {
      segs.push_back({begin, k + 1});
      begin = k + 1;
    }
  }
  return segs;
}

bool OnnxModelBuilder::non_negative(const OnnxNode& n) const {
  if (n.op == "Relu" || n.op == "Sigmoid" || n.op == "HardSigmoid" || n.op == "Softmax") return true;
  if (n.op == "Clip") {
    if (n.inputs.size() > 1 && g_.constants.count(n.inputs[1])) return g_.constants.at(n.inputs[1]).item<double>() >= 0;
    return n.attrs.count("min") && n.attr_f("min", -1) >= 0;
  }
  if (!kSignPreserving.count(n.op)) return false;
  bool any = false;
  for (const auto& s : n.inputs) {
    if (is_const(s)) continue;
    auto it = nonneg_.find(s);
    if (it == nonneg_.end() || !it->second) return false;
    any = true;
    if (n.op != "Concat" && n.op != "Add" && n.op != "Mul") break;  // only the data input counts
  }
  return any;
}

void OnnxModelBuilder::make_units() {
  // Layer-less pieces join a neighbour: activations the unit before, anything else the unit after.
  std::vector<std::pair<size_t, size_t>> units;
  size_t pending = SIZE_MAX;
  for (auto [b, e] : segments()) {
    bool has_layer = false, only_acts = true;
    for (size_t k = b; k < e; ++k) {
      has_layer = has_layer || layer_at_.count(k);
      only_acts = only_acts && kActivationOps.count(nodes_[k].op);
    }
    if (pending != SIZE_MAX) b = pending;
    if (has_layer) {
      units.push_back({b, e});
      pending = SIZE_MAX;
    } else if (only_acts && !units.empty() && pending == SIZE_MAX) {
      units.back().second = e;
    } else {
      pending = b;
    }
  }
  FQ_CHECK(!units.empty(), ModelError, "\"", path(), "\" has no Conv, Gemm or MatMul with a constant weight: nothing to "
           "quantize");
  if (pending != SIZE_MAX) units.back().second = nodes_.size();  // trailing Softmax and the like
  for (auto [b, e] : units) add_unit(b, e);
  m_.all_layers().front()->role = LayerRole::Input;
  m_.all_layers().back()->role = LayerRole::Output;
  for (auto& u : m_.units_)
    for (auto& s : u->sites_)
      for (const auto& l : u->layers_)
        if (l.role == LayerRole::Output && s.name == l.name + ".in") s.role = SiteRole::ClassifierInput;
}

void OnnxModelBuilder::add_unit(size_t b, size_t e) {
  auto u = std::make_unique<GraphUnit>();
  u->graph_ = &g_;
  u->input_ = m_.units_.empty() ? g_.inputs.at(0) : m_.units_.back()->output_;
  std::vector<std::string> names;
  for (size_t k = b; k < e; ++k) {
    const OnnxNode& n = nodes_[k];
    u->nodes_.push_back(n);
    LayerCall c;
    if (layer_at_.count(k)) {
      c = call_at_[k];
      c.layer = static_cast<int>(u->layers_.size());
      names.push_back(layer_at_[k].name);
      u->layers_.push_back(layer_at_[k]);
    }
    u->calls_.push_back(c);
    for (const auto& o : n.outputs) nonneg_[o] = non_negative(n);
  }
  u->output_ = e == nodes_.size() ? g_.outputs.at(0) : nodes_[e - 1].outputs.at(0);
  u->name_ = common_prefix(names);
  if (u->name_.empty()) u->name_ = names.front() + "-" + names.back();  // no shared module path: first-last layer
  // Sites in the order their tensors are produced: layer inputs inside the unit, then the unit's output.
  auto add_site = [&](const std::string& tensor, const std::string& name) {
    if (u->site_of_.count(tensor)) return;
    u->site_of_[tensor] = static_cast<int>(u->sites_.size());
    u->sites_.push_back({name, nonneg_[tensor], SiteRole::Activation});
    m_.site_tensors_[u->name_ + "/" + name] = tensor;
  };
  for (size_t k = 0; k < u->nodes_.size(); ++k)
    for (const auto& o : u->nodes_[k].outputs)
      for (size_t j = k + 1; j < u->nodes_.size(); ++j)
        if (u->calls_[j].layer >= 0 && u->nodes_[j].inputs[0] == o)
          add_site(o, u->layers_[u->calls_[j].layer].name + ".in");
  if (u->output_ != g_.outputs.at(0)) add_site(u->output_, u->name_ + ".out");
  m_.units_.push_back(std::move(u));
}

void OnnxModelBuilder::build() {
  FQ_CHECK(g_.inputs.size() == 1, ModelError, "\"", path(), "\" has ", g_.inputs.size(),
           " inputs -> supported: one input (an image batch)");
  find_layers();
  fold_batchnorms();
  make_units();
}

std::unique_ptr<OnnxModel> OnnxModel::load(const std::string& path) {
  std::unique_ptr<OnnxModel> m(new OnnxModel());
  m->graph_ = OnnxGraph::load(path);
  OnnxModelBuilder(*m).build();
  return m;
}

OnnxModel::~OnnxModel() = default;

std::vector<Unit*> OnnxModel::units() {
  std::vector<Unit*> out;
  for (auto& u : units_) out.push_back(u.get());
  return out;
}

void OnnxModel::to(torch::Device device) {
  for (auto& u : units_)
    for (auto& l : u->layers_) l.to(device);
}

const OnnxModel::LayerSource& OnnxModel::layer_source(const std::string& name) const {
  auto it = layer_sources_.find(name);
  FQ_CHECK(it != layer_sources_.end(), ModelError, "\"", graph_.path, "\" has no quantizable layer \"", name, "\"");
  return it->second;
}

const std::string& OnnxModel::site_tensor(const std::string& key) const {
  auto it = site_tensors_.find(key);
  FQ_CHECK(it != site_tensors_.end(), ModelError, "\"", graph_.path, "\" has no activation site \"", key, "\"");
  return it->second;
}

}  // namespace flexquant
