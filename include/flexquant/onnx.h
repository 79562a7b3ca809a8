// ONNX models in: the graph parsed with the ONNX project's own protobuf classes (Debian libonnx-dev), executed with
// LibTorch ops. Initializers and Constant nodes both hold weights; every node whose inputs are all constants (the
// shape subgraphs exporters emit: Shape, Gather, ConstantOfShape, Cast, Concat, ...) is folded at load. An op
// outside onnx_supported_ops() is refused at load, naming the op, the node and the supported list.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace flexquant {

/// One attribute value (the kinds CNN exporters use).
struct OnnxAttr {
  int64_t i = 0;
  float f = 0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  torch::Tensor t;
};

struct OnnxNode {
  std::string op, name;
  std::vector<std::string> inputs, outputs;  ///< "" marks an omitted optional input
  std::map<std::string, OnnxAttr> attrs;
  int64_t attr_i(const std::string& k, int64_t dflt) const;
  float attr_f(const std::string& k, float dflt) const;
  std::string attr_s(const std::string& k, const std::string& dflt) const;
  std::vector<int64_t> attr_ints(const std::string& k, std::vector<int64_t> dflt = {}) const;
};

class OnnxGraph {
 public:
  /// Parses `path` (opsets 11-17 of the default domain) and folds constant subgraphs. IoError for a missing or
  /// unreadable file; ModelError naming the op, node and supported ops for anything it cannot run.
  static OnnxGraph load(const std::string& path);

  /// Runs the graph on its first input; returns the first output.
  torch::Tensor run(const torch::Tensor& input) const;
  /// Runs on every graph input (in `inputs` order); every value kept, by tensor name.
  std::map<std::string, torch::Tensor> run_all(const std::vector<torch::Tensor>& inputs) const;

  std::vector<OnnxNode> nodes;                      ///< topological order, constants folded away
  std::map<std::string, torch::Tensor> constants;   ///< initializers, Constant outputs, folded values
  std::vector<std::string> inputs, outputs;         ///< graph inputs (initializers excluded) and outputs
  std::vector<int64_t> input_shape;                 ///< of the first input; -1 for a symbolic dimension
  int64_t opset = 0;
  std::string path;
};

/// A TensorProto file (the ONNX test data's input_<i>.pb / output_<i>.pb).
torch::Tensor onnx_load_tensor_pb(const std::string& path);

/// One case of the ONNX project's backend node tests (libonnx-testdata: <root>/test_*/model.onnx + test_data_set_*).
struct OnnxCaseResult {
  std::string case_name, op;  ///< op: the model's node op ("" when it holds several nodes)
  bool passed = false;
  std::string message;        ///< why it failed (max |diff| and where, or the error)
};
/// Runs every case under `root` whose model uses only supported ops; float outputs must match within
/// |a - b| <= 1e-4 + 1e-4 |b| (integer and bool outputs exactly). Cases with an unsupported op are not listed.
std::vector<OnnxCaseResult> onnx_node_conformance(const std::string& root);
/// Passed and total cases per op; cases without a single op go under "(several ops, or failed at load)".
struct OnnxOpCount {
  int passed = 0, total = 0;
};
std::map<std::string, OnnxOpCount> onnx_conformance_by_op(const std::vector<OnnxCaseResult>& results);

/// Every op the executor runs, sorted.
std::vector<std::string> onnx_supported_ops();
/// Runs one node on its input values (an omitted optional input is an undefined tensor); the node's outputs.
/// ModelError naming the node for bad attributes or shapes.
std::vector<torch::Tensor> onnx_run_node(const OnnxNode& node, const std::vector<torch::Tensor>& inputs, int64_t opset);

}  // namespace flexquant
