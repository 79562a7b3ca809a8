// Any ONNX CNN as a ModelAdapter, found from its graph (no hand-written architecture):
//   layers  every Conv (2-D), Gemm and MatMul whose weight is a constant; a BatchNormalization that is its conv's
//           only consumer is folded into it (W' = W g/sqrt(var+eps), b' = beta + (b - mean) g/sqrt(var+eps)).
//   units   BRECQ's blocks: the graph is cut at every single-tensor cut point (after a node where exactly one
//           computed tensor is still needed, e.g. a residual block's output); a piece without a layer joins the
//           unit before it when it is only activation functions (a conv's ReLU) and the unit after it otherwise
//           (pooling and flattening belong to the classifier).
//   sites   activations are quantized at every unit output (except the network output) and at every layer input
//           inside a unit (a residual block's inner ReLU, a classifier's pooled features); the network input and
//           output are never quantized. The first layer is LayerRole::Input, the last LayerRole::Output.
// For ResNet-20/32/44 exported from PyTorch this finds the units, layers and sites the hand-written resnet_cifar
// adapter has, in the same order, so both paths quantize alike.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/onnx.h"

namespace flexquant {

class GraphUnit;

class OnnxModel : public ModelAdapter {
 public:
  /// Loads and partitions `path` (OnnxGraph::load's errors, plus ModelError when the graph has no quantizable
  /// layer or more than one input).
  static std::unique_ptr<OnnxModel> load(const std::string& path);
  ~OnnxModel() override;

  std::string arch() const override { return "onnx"; }
  std::vector<Unit*> units() override;
  void to(torch::Device device) override;

  /// Where a quantized layer sits in the ONNX graph (for QDQ export).
  struct LayerSource {
    std::string node;          ///< the Conv / Gemm / MatMul node
    std::string weight_input;  ///< the tensor name of its weight input
    bool transposed = false;   ///< the graph stores the weight as [in, out] (Gemm transB=0, MatMul)
    std::string folded_bn;     ///< the BatchNormalization folded into it ("" if none)
  };
  const LayerSource& layer_source(const std::string& layer_name) const;
  /// The graph tensor quantized at a site, by site_key().
  const std::string& site_tensor(const std::string& site_key) const;
  const OnnxGraph& graph() const { return graph_; }

 private:
  OnnxModel() = default;
  OnnxGraph graph_;
  std::vector<std::unique_ptr<GraphUnit>> units_;
  std::map<std::string, LayerSource> layer_sources_;
  std::map<std::string, std::string> site_tensors_;
  friend class OnnxModelBuilder;
};

}  // namespace flexquant
