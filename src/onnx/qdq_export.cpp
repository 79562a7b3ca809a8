// QDQ ONNX export (include/flexquant/onnx_export.h): the source ModelProto edited in place, so everything the
// exporter wrote (shape subgraphs, names, metadata) stays as it was.
#include "flexquant/onnx_export.h"

#include <onnx/onnx_pb.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "flexquant/error.h"
#include "flexquant/onnx_model.h"

namespace flexquant {

std::string qdq_spec_mismatch(const WeightQuantSpec& s) {
  if (!s.integer())
    return "the weights are on the " + s.format.name() + " grid; QDQ ONNX holds integer codes only -> export an "
           "integer recipe (weight.format int), or keep the .fqz";
  if (s.granularity == Granularity::PerGroup)
    return "per-group scales; DequantizeLinear takes per-tensor or per-channel ones up to opset 20 -> "
           "weight.granularity channel|tensor";
  if (s.scale_dtype == ScaleDtype::KQuant || has_fp16_min(s))
    return "a minimum offset per group (" + to_string(s.scale_dtype) + " scales, asymmetric); DequantizeLinear takes "
           "an integer zero point -> use weight.scale_dtype=fp32";
  return "";
}

namespace {
namespace fs = std::filesystem;

void add_initializer(onnx::GraphProto& g, const std::string& name, const torch::Tensor& value) {
  torch::Tensor t = value.detach().to(torch::kCPU).contiguous();
  onnx::TensorProto* p = g.add_initializer();
  p->set_name(name);
  p->set_data_type(t.scalar_type() == torch::kUInt8 ? onnx::TensorProto::UINT8 : onnx::TensorProto::FLOAT);
  if (t.scalar_type() != torch::kUInt8) t = t.to(torch::kFloat);
  for (int64_t d : t.sizes()) p->add_dims(d);
  p->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size()));
}

onnx::NodeProto make_node(const std::string& op, const std::string& name, std::vector<std::string> ins,
                          const std::string& out) {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name);
  for (auto& s : ins) n.add_input(s);
  n.add_output(out);
  return n;
}

void set_int_attr(onnx::NodeProto& n, const std::string& key, int64_t v) {
  for (auto& a : *n.mutable_attribute())
    if (a.name() == key) return a.set_i(v);
  auto* a = n.add_attribute();
  a->set_name(key);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void set_float_attr(onnx::NodeProto& n, const std::string& key, float v) {
  for (auto& a : *n.mutable_attribute())
    if (a.name() == key) return a.set_f(v);
}

class QdqWriter {
 public:
  QdqWriter(const std::string& source, ModelAdapter& quantized, const QuantState& state)
      : source_(source), quantized_(quantized), state_(state), map_(OnnxModel::load(source)) {
    std::ifstream in(source, std::ios::binary);
    FQ_CHECK(in.good() && model_.ParseFromIstream(&in), IoError, "\"", source, "\" is not a readable ONNX model");
    for (const auto& o : model_.opset_import())
      if (o.domain().empty() || o.domain() == "ai.onnx") opset_ = o.version();
  }
  QdqExportReport write(const std::string& out);

 private:
  onnx::NodeProto& node_named(const std::string& name);
  void write_layer(const QuantLayer& l);
  void write_weight_codes(const QuantLayer& l, const QuantizedTensor& q, const OnnxModel::LayerSource& src,
                          onnx::NodeProto& node);
  void write_site(const std::string& key, const ActQuantizer& q);
  void assemble();
  void drop_unused_initializers();

  std::string source_;
  ModelAdapter& quantized_;
  const QuantState& state_;
  std::unique_ptr<OnnxModel> map_;
  onnx::ModelProto model_;
  int64_t opset_ = 0;
  std::vector<onnx::NodeProto> weight_nodes_;                       // DequantizeLinear of weights: first
  std::map<std::string, std::vector<onnx::NodeProto>> after_;       // tensor -> its Clip/Q/DQ
  std::map<std::string, std::string> renamed_;                      // site tensor -> its dequantized name
  std::set<std::string> dropped_nodes_;
  QdqExportReport report_;
};

onnx::NodeProto& QdqWriter::node_named(const std::string& name) {
  for (auto& n : *model_.mutable_graph()->mutable_node())
    if (n.name() == name || (n.name().empty() && n.output_size() && n.output(0) == name)) return n;
  throw ModelError("\"" + source_ + "\": node \"" + name + "\" is missing");
}

void QdqWriter::write_weight_codes(const QuantLayer& l, const QuantizedTensor& q, const OnnxModel::LayerSource& src,
                                   onnx::NodeProto& node) {
  const WeightQuantSpec& s = q.spec;
  FQ_CHECK(q.terms.empty(), ConfigError, "layer ", l.name, " is a multipoint sum of ", q.terms.size() + 1, " grids; "
           "a QDQ weight is one DequantizeLinear -> quantize with a single-grid method (rtn, flexround, gptq, ...), or "
           "keep the .fqz");
  const std::string why = qdq_spec_mismatch(s);
  FQ_CHECK(why.empty(), ConfigError, "layer ", l.name, ": ", why);
  const bool per_channel = s.granularity == Granularity::PerChannel;
  FQ_CHECK(!per_channel || opset_ >= 13, ConfigError, "\"", source_, "\" is opset ", opset_, "; per-channel "
           "DequantizeLinear needs opset 13 -> re-export the model with opset_version=13, or weight.granularity tensor");
  torch::Tensor codes = q.codes.reshape(q.shape).to(torch::kUInt8);
  if (src.transposed) codes = codes.t().contiguous();
  torch::Tensor scale = q.qparams.scale.reshape({-1}).to(torch::kFloat);
  torch::Tensor zp = q.qparams.zero_point.reshape({-1}).to(torch::kUInt8);
  if (!per_channel) scale = scale.reshape({}), zp = zp.reshape({});
  const std::string w = src.weight_input + "_fq";
  auto& g = *model_.mutable_graph();
  add_initializer(g, w + "_codes", codes);
  add_initializer(g, w + "_scale", scale);
  add_initializer(g, w + "_zero_point", zp);
  onnx::NodeProto dq = make_node("DequantizeLinear", w + "_DequantizeLinear", {w + "_codes", w + "_scale", w + "_zero_point"},
                                 w + "_dequantized");
  if (per_channel) set_int_attr(dq, "axis", src.transposed ? 1 : 0);
  weight_nodes_.push_back(dq);
  node.set_input(1, w + "_dequantized");
}

void QdqWriter::write_layer(const QuantLayer& l) {
  const OnnxModel::LayerSource& src = map_->layer_source(l.name);
  onnx::NodeProto& node = node_named(src.node);
  auto& g = *model_.mutable_graph();
  if (!src.folded_bn.empty()) {
    onnx::NodeProto& bn = node_named(src.folded_bn);
    node.set_output(0, bn.output(0));
    dropped_nodes_.insert(src.folded_bn);
    ++report_.batchnorms_folded;
  }
  if (node.op_type() == "Gemm") set_float_attr(node, "alpha", 1.f), set_float_attr(node, "beta", 1.f);  // folded in
  if (l.bias.defined()) {
    add_initializer(g, l.name + "_fq_bias", l.bias);
    while (node.input_size() < 3) node.add_input("");
    node.set_input(2, l.name + "_fq_bias");
  }
  auto it = state_.weights.find(l.name);
  if (it != state_.weights.end()) {
    write_weight_codes(l, it->second, src, node);
    ++report_.weights_quantized;
  } else {
    add_initializer(g, l.name + "_fq_weight", src.transposed ? l.weight.t() : l.weight);
    node.set_input(1, l.name + "_fq_weight");
    ++report_.weights_float;
  }
}

void QdqWriter::write_site(const std::string& key, const ActQuantizer& q) {
  if (q.is_identity()) return;
  const std::string& t = map_->site_tensor(key);
  FQ_CHECK(!q.spec().per_token && !q.spec().format, ConfigError, "activation site ", key, " is ",
           q.spec().per_token ? "per-token (dynamic)" : "on a minifloat grid",
           "; QDQ ONNX holds static integer activations -> act.per_token false, act.format int");
  const float s = q.step(), z = q.zero_point();
  const double qmax = static_cast<double>((int64_t{1} << q.spec().bits) - 1);
  auto& g = *model_.mutable_graph();
  const std::string p = t + "_fq";
  // Clip to the recipe's code range first: QuantizeLinear saturates only at uint8's 0..255.
  add_initializer(g, p + "_lo", torch::tensor(static_cast<float>(-z * s)).reshape({}));
  add_initializer(g, p + "_hi", torch::tensor(static_cast<float>((qmax - z) * s)).reshape({}));
  add_initializer(g, p + "_scale", torch::tensor(s).reshape({}));
  add_initializer(g, p + "_zero_point", torch::tensor(static_cast<uint8_t>(z), torch::kUInt8).reshape({}));
  after_[t] = {make_node("Clip", p + "_Clip", {t, p + "_lo", p + "_hi"}, p + "_clipped"),
               make_node("QuantizeLinear", p + "_QuantizeLinear", {p + "_clipped", p + "_scale", p + "_zero_point"}, p + "_codes"),
               make_node("DequantizeLinear", p + "_DequantizeLinear", {p + "_codes", p + "_scale", p + "_zero_point"},
                         p + "_dequantized")};
  renamed_[t] = p + "_dequantized";
  ++report_.activation_sites;
}

// The node list: weight DequantizeLinears, then every kept node followed by the QDQ of its site outputs; every
// consumer of a site tensor reads its dequantized value.
void QdqWriter::assemble() {
  auto& g = *model_.mutable_graph();
  std::vector<onnx::NodeProto> nodes = weight_nodes_;
  for (const auto& n : g.node()) {
    if (dropped_nodes_.count(n.name())) continue;
    onnx::NodeProto m = n;
    for (int i = 0; i < m.input_size(); ++i)
      if (auto r = renamed_.find(m.input(i)); r != renamed_.end()) m.set_input(i, r->second);
    nodes.push_back(m);
    for (const auto& o : n.output())
      if (auto a = after_.find(o); a != after_.end()) nodes.insert(nodes.end(), a->second.begin(), a->second.end());
  }
  // The folded BatchNormalization's output is now the conv's: its QDQ follows the conv.
  g.clear_node();
  for (auto& n : nodes) *g.add_node() = std::move(n);
}

void QdqWriter::drop_unused_initializers() {
  auto& g = *model_.mutable_graph();
  std::set<std::string> used;
  for (const auto& n : g.node())
    for (const auto& s : n.input()) used.insert(s);
  for (const auto& o : g.output()) used.insert(o.name());
  google::protobuf::RepeatedPtrField<onnx::TensorProto> kept;
  for (auto& t : *g.mutable_initializer())
    if (used.count(t.name())) *kept.Add() = std::move(t);
  g.mutable_initializer()->Swap(&kept);
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> inputs;  // old exporters list initializers as inputs
  for (auto& i : *g.mutable_input())
    if (used.count(i.name())) *inputs.Add() = std::move(i);
  g.mutable_input()->Swap(&inputs);
}

QdqExportReport QdqWriter::write(const std::string& out) {
  for (QuantLayer* l : quantized_.all_layers()) write_layer(*l);
  for (const auto& [key, q] : state_.acts) write_site(key, *q);
  assemble();
  drop_unused_initializers();
  model_.set_producer_name("flexquant");
  const fs::path tmp = out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    FQ_CHECK(f.good(), IoError, "cannot write \"", tmp.string(), "\" -> check that the folder exists and is writable");
    FQ_CHECK(model_.SerializeToOstream(&f) && f.flush(), IoError, "writing \"", tmp.string(), "\" failed (disk full?)");
  }
  fs::rename(tmp, out);
  report_.bytes = static_cast<int64_t>(fs::file_size(out));
  return report_;
}

}  // namespace

QdqExportReport export_qdq_onnx(const std::string& source_onnx, ModelAdapter& quantized, const QuantState& state,
                                const std::string& out) {
  return QdqWriter(source_onnx, quantized, state).write(out);
}

}  // namespace flexquant
