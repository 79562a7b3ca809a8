// ONNX graph loading (protobuf classes from Debian's libonnx-dev), constant folding and the reference executor.
#include "flexquant/onnx.h"

#include <onnx/onnx_pb.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "flexquant/error.h"
#include "onnx_internal.h"

namespace flexquant {
namespace {

template <class T>
torch::Tensor from_vector(const T& field, torch::ScalarType st, const std::vector<int64_t>& shape) {
  std::vector<typename T::value_type> v(field.begin(), field.end());
  return torch::tensor(v).to(st).reshape(shape).clone();
}

}  // namespace

torch::ScalarType onnx_dtype(int32_t data_type, const std::string& what) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT: return torch::kFloat;
    case onnx::TensorProto::UINT8: return torch::kUInt8;
    case onnx::TensorProto::INT8: return torch::kInt8;
    case onnx::TensorProto::INT16: return torch::kInt16;
    case onnx::TensorProto::INT32: return torch::kInt;
    case onnx::TensorProto::INT64: return torch::kLong;
    case onnx::TensorProto::BOOL: return torch::kBool;
    case onnx::TensorProto::FLOAT16: return torch::kHalf;
    case onnx::TensorProto::DOUBLE: return torch::kDouble;
    default:
      throw ModelError(what + ": ONNX data type " + std::to_string(data_type) +
                       " is not supported -> supported: float, float16, double, int8/16/32/64, uint8, bool");
  }
}

torch::Tensor onnx_tensor(const onnx::TensorProto& p, const std::string& what) {
  std::vector<int64_t> shape(p.dims().begin(), p.dims().end());
  FQ_CHECK(p.data_location() != onnx::TensorProto::EXTERNAL, ModelError, what,
           ": tensor \"", p.name(), "\" keeps its data in an external file -> save the model with the weights inside");
  const torch::ScalarType st = onnx_dtype(p.data_type(), what + ", tensor \"" + p.name() + "\"");
  // The element count comes from the dims alone; it is checked against the data the file holds before anything
  // is allocated (a tensor claiming 2^60 elements is refused, not attempted).
  int64_t numel = 1;
  for (int64_t d : shape) {
    FQ_CHECK(d >= 0 && (d == 0 || numel <= (int64_t{1} << 48) / d), ModelError, what, ": tensor \"", p.name(),
             "\" has dims ", torch::IntArrayRef(shape), " -> each must be >= 0, at most 2^48 elements in all");
    numel *= d;
  }
  if (p.has_raw_data()) {
    const std::string& raw = p.raw_data();
    const int64_t elem = static_cast<int64_t>(c10::elementSize(st));
    FQ_CHECK(static_cast<int64_t>(raw.size()) == numel * elem, ModelError, what, ": tensor \"", p.name(), "\" has ",
             raw.size(), " bytes of raw data for ", numel, " elements of ", elem, " bytes");
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(st));
    if (numel) std::memcpy(t.data_ptr(), raw.data(), raw.size());
    return t;
  }
  const int64_t stored = p.data_type() == onnx::TensorProto::FLOAT    ? p.float_data_size()
                         : p.data_type() == onnx::TensorProto::DOUBLE ? p.double_data_size()
                         : p.data_type() == onnx::TensorProto::INT64  ? p.int64_data_size()
                                                                      : p.int32_data_size();
  FQ_CHECK(stored == numel, ModelError, what, ": tensor \"", p.name(), "\" holds ", stored, " values for dims ",
           torch::IntArrayRef(shape), " (", numel, " elements)");
  switch (p.data_type()) {
    case onnx::TensorProto::FLOAT: return from_vector(p.float_data(), st, shape);
    case onnx::TensorProto::DOUBLE: return from_vector(p.double_data(), st, shape);
    case onnx::TensorProto::INT64: return from_vector(p.int64_data(), st, shape);
    case onnx::TensorProto::FLOAT16: {
      std::vector<int16_t> bits(p.int32_data().begin(), p.int32_data().end());
      return torch::tensor(bits).view(torch::kHalf).reshape(shape).clone();
    }
    default: return from_vector(p.int32_data(), st, shape);  // int8/16/32, uint8, bool are stored as int32
  }
}

namespace {

OnnxAttr read_attr(const onnx::AttributeProto& a, const std::string& what) {
  OnnxAttr r;
  r.i = a.i();
  r.f = a.f();
  r.s = a.s();
  r.ints.assign(a.ints().begin(), a.ints().end());
  r.floats.assign(a.floats().begin(), a.floats().end());
  if (a.has_t()) r.t = onnx_tensor(a.t(), what);
  return r;
}

// A Constant node's value, whichever attribute holds it.
torch::Tensor constant_value(const OnnxNode& n) {
  if (auto it = n.attrs.find("value"); it != n.attrs.end()) return it->second.t;
  if (auto it = n.attrs.find("value_float"); it != n.attrs.end()) return torch::tensor(it->second.f);
  if (auto it = n.attrs.find("value_floats"); it != n.attrs.end()) return torch::tensor(it->second.floats);
  if (auto it = n.attrs.find("value_int"); it != n.attrs.end()) return torch::tensor(it->second.i);
  if (auto it = n.attrs.find("value_ints"); it != n.attrs.end()) return torch::tensor(it->second.ints);
  throw ModelError("Constant node \"" + n.name + "\" has no value attribute this reader knows (value, value_float(s), "
                   "value_int(s))");
}

}  // namespace

int64_t OnnxNode::attr_i(const std::string& k, int64_t d) const {
  auto it = attrs.find(k);
  return it == attrs.end() ? d : it->second.i;
}
float OnnxNode::attr_f(const std::string& k, float d) const {
  auto it = attrs.find(k);
  return it == attrs.end() ? d : it->second.f;
}
std::string OnnxNode::attr_s(const std::string& k, const std::string& d) const {
  auto it = attrs.find(k);
  return it == attrs.end() ? d : it->second.s;
}
std::vector<int64_t> OnnxNode::attr_ints(const std::string& k, std::vector<int64_t> d) const {
  auto it = attrs.find(k);
  return it == attrs.end() ? d : it->second.ints;
}

OnnxGraph OnnxGraph::load(const std::string& path) {
  FQ_CHECK(std::filesystem::exists(path), IoError, "ONNX model \"", path, "\" does not exist");
  onnx::ModelProto m;
  {
    std::ifstream in(path, std::ios::binary);
    FQ_CHECK(in.good() && m.ParseFromIstream(&in), IoError, "\"", path,
             "\" is not a readable ONNX model (protobuf parse failed: truncated or not ONNX)");
  }
  OnnxGraph g;
  g.path = path;
  for (const auto& o : m.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") g.opset = o.version();
  const auto& graph = m.graph();
  for (const auto& init : graph.initializer()) g.constants[init.name()] = onnx_tensor(init, "\"" + path + "\"");
  for (const auto& in : graph.input()) {
    if (g.constants.count(in.name())) continue;  // old exporters list initializers as inputs too
    if (g.inputs.empty())
      for (const auto& d : in.type().tensor_type().shape().dim()) g.input_shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
    g.inputs.push_back(in.name());
  }
  for (const auto& out : graph.output()) g.outputs.push_back(out.name());
  FQ_CHECK(!g.outputs.empty(), ModelError, "\"", path, "\" has no graph output");

  const auto supported = onnx_supported_ops();
  const std::set<std::string> ops(supported.begin(), supported.end());
  for (const auto& np : graph.node()) {
    if (ops.count(np.op_type())) continue;
    std::string list;
    for (const auto& o : supported) list += (list.empty() ? "" : ", ") + o;
    throw ModelError("\"" + path + "\": op " + np.op_type() + " (node \"" + (np.name().empty() ? np.op_type() : np.name()) +
                     "\") is not supported -> supported ops: " + list);
  }
  // Real exporters write opsets 11-17; the ONNX test data keeps each op at the opset it last changed in, so the
  // executor follows the opset for the ops whose form changed (Pad, Slice, Clip, Squeeze, Unsqueeze, Softmax).
  // Newer opsets may change an op's meaning: refused.
  FQ_CHECK(g.opset >= 1 && g.opset <= 17, ModelError, "\"", path, "\" uses opset ", g.opset,
           " -> supported: up to 17 (re-export with opset_version=13)");
  for (const auto& np : graph.node()) {
    OnnxNode n;
    n.op = np.op_type();
    n.name = np.name().empty() ? (np.output_size() ? np.output(0) : n.op) : np.name();
    FQ_CHECK(np.domain().empty() || np.domain() == "ai.onnx", ModelError, "\"", path, "\": node \"", n.name,
             "\" is in domain \"", np.domain(), "\" -> supported: the default ONNX domain");
    n.inputs.assign(np.input().begin(), np.input().end());
    n.outputs.assign(np.output().begin(), np.output().end());
    for (const auto& a : np.attribute()) n.attrs[a.name()] = read_attr(a, "\"" + path + "\", node \"" + n.name + "\"");
    // Fold: a node whose inputs are all known constants runs now, once.
    const bool foldable = std::all_of(n.inputs.begin(), n.inputs.end(),
                                      [&](const std::string& s) { return s.empty() || g.constants.count(s); });
    if (n.op == "Constant") {
      FQ_CHECK(n.outputs.size() == 1, ModelError, "\"", path, "\": Constant node \"", n.name, "\" has ",
               n.outputs.size(), " outputs -> expected 1");
      g.constants[n.outputs[0]] = constant_value(n);
    } else if (foldable) {
      std::vector<torch::Tensor> ins;
      for (const auto& s : n.inputs) ins.push_back(s.empty() ? torch::Tensor() : g.constants.at(s));
      std::vector<torch::Tensor> outs;
      try {
        outs = onnx_run_node(n, ins, g.opset);
      } catch (const ModelError& e) {  // the executor's message names the node; this one names the file too
        throw ModelError(detail::concat("\"", path, "\": ", e.what(), " (while folding constants at load; the graph is "
                                        "corrupt or not valid ONNX)"));
      }
      for (size_t i = 0; i < n.outputs.size() && i < outs.size(); ++i) g.constants[n.outputs[i]] = outs[i];
    } else {
      g.nodes.push_back(std::move(n));
    }
  }
  return g;
}

std::map<std::string, torch::Tensor> OnnxGraph::run_all(const std::vector<torch::Tensor>& xs) const {
  torch::NoGradGuard ng;
  FQ_CHECK(xs.size() == inputs.size(), ModelError, "\"", path, "\" takes ", inputs.size(), " inputs, got ", xs.size());
  const torch::Device dev = xs.empty() || !xs[0].defined() ? torch::Device(torch::kCPU) : xs[0].device();
  std::map<std::string, torch::Tensor> env;
  for (size_t i = 0; i < xs.size(); ++i) env[inputs[i]] = xs[i];
  auto value = [&](const std::string& s) -> torch::Tensor {
    if (s.empty()) return torch::Tensor();
    if (auto it = env.find(s); it != env.end()) return it->second;
    if (auto it = constants.find(s); it != constants.end()) return it->second.to(dev);
    throw ModelError("\"" + path + "\": tensor \"" + s + "\" is used before any node produces it");
  };
  for (const OnnxNode& n : nodes) {
    std::vector<torch::Tensor> ins;
    for (const auto& s : n.inputs) ins.push_back(value(s));
    auto outs = onnx_run_node(n, ins, opset);
    for (size_t i = 0; i < n.outputs.size() && i < outs.size(); ++i) env[n.outputs[i]] = outs[i];
  }
  for (const auto& o : outputs)
    if (!env.count(o)) env[o] = value(o);
  return env;
}

torch::Tensor OnnxGraph::run(const torch::Tensor& x) const { return run_all({x}).at(outputs.at(0)); }

torch::Tensor onnx_load_tensor_pb(const std::string& path) {
  onnx::TensorProto p;
  std::ifstream in(path, std::ios::binary);
  FQ_CHECK(in.good() && p.ParseFromIstream(&in), IoError, "\"", path, "\" is not a readable ONNX TensorProto");
  return onnx_tensor(p, "\"" + path + "\"");
}

}  // namespace flexquant
