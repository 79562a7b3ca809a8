// Image-classification CNNs as ModelAdapters, built from safetensors weights with BatchNorm folded into
// the convolutions: CIFAR ResNet-20/32/44 (option-A shortcut) and the torchvision ResNet-18/34/50/101/152
// and MobileNetV2 layouts under torchvision's tensor names. Plus BN folding and FP evaluation.
// Any model exported as .onnx needs none of these (OnnxModel, onnx_model.h, finds the same structure from the
// graph); they stay for checkpoints that exist only as safetensors (torchvision state dicts).
//
// Units and activation sites (QDrop placement, methods.md §3.2):
//   resnet_cifar: "conv1" (conv+BN+ReLU; site "conv1.out"), blocks "layer<s>.<i>" (sites "<block>.act1"
//                 after conv1+ReLU, "<block>.out" after add+ReLU), "linear" (avgpool+flatten+linear; site
//                 "linear.in" on the pooled features, i.e. the last layer's input).
//   resnet18/34/50/101/152: "conv1" (conv+BN+ReLU, site "conv1.out" after ReLU, then maxpool), blocks
//                 "layer<s>.<i>" (Basic: act1, out; Bottleneck: act1, act2, out; "downsample.0" is a
//                 layer of the block), "fc" (avgpool+flatten+fc; site "fc.in").
//   mobilenet_v2: "features.0" (site "features.0.out"), InvertedResidual "features.1".."features.17"
//                 (sites after each ReLU6, then "<block>.out" on the linear block output, signed),
//                 "features.18" (1x1 conv+BN+ReLU6; site "features.18.out"), "classifier" (avgpool+
//                 flatten+dropout(eval: identity)+Linear "classifier.1"; site "classifier.in").
// The network output (logits) is never quantized.
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/safetensors.h"

namespace flexquant {

/// Architectures load_image_classifier accepts: resnet_cifar, resnet18, resnet34, resnet50, resnet101,
/// resnet152, mobilenet_v2.
std::vector<std::string> image_classifier_archs();

/// Loads weights from a safetensors file and builds `arch` with BN folded (eps 1e-5). Block counts,
/// widths and the class count are inferred from the tensors and then every tensor is checked.
/// Throws ConfigError for an unknown arch (listing the valid ones), ModelError naming the tensor for
/// missing, unexpected (except "*num_batches_tracked") or wrong-shape tensors, NumericError naming the
/// tensor for NaN/inf weights, IoError for file problems.
std::unique_ptr<ModelAdapter> load_image_classifier(const std::string& safetensors_path, const std::string& arch);
/// The same from tensors already in memory.
std::unique_ptr<ModelAdapter> build_image_classifier(const SafeTensorsFile& weights, const std::string& arch);

/// Conv weight and bias with an eval-mode BatchNorm folded in:
///   W' = W * g/sqrt(var+eps) per output channel,  b' = beta + (b - mean) * g/sqrt(var+eps).
struct FoldedConv {
  torch::Tensor weight;
  torch::Tensor bias;
  FoldedBatchNorm bn;  ///< the statistics folded in (float32)
};
/// `conv_bias` may be undefined (no bias). Computed in float32 in the order PyTorch's ONNX exporter folds them, so
/// the safetensors and ONNX exports of one model fold to the same floats.
FoldedConv fold_batchnorm(const torch::Tensor& conv_weight, const torch::Tensor& conv_bias, const torch::Tensor& gamma,
                          const torch::Tensor& beta, const torch::Tensor& running_mean,
                          const torch::Tensor& running_var, double eps = 1e-5);

/// Top-1 accuracy of a classifier.
struct EvalResult {
  double top1 = 0;        ///< percent, 0..100
  int64_t correct = 0;
  int64_t count = 0;
  double seconds = 0;     ///< wall time of the evaluation
  torch::Tensor logits;   ///< [N, classes] float32 on the CPU when asked for (keep_logits), else undefined
};

/// Runs `model` through `ctx` over images [N, C, H, W] (labels int64 [N]) in batches of `batch`
/// (default 256, >= 1) under torch::NoGradGuard, on the device of the model's first layer.
EvalResult evaluate_classifier(ModelAdapter& model, const torch::Tensor& images, const torch::Tensor& labels,
                               UnitContext& ctx, int64_t batch = 256, bool keep_logits = false);
/// FP evaluation (plain UnitContext).
EvalResult evaluate_classifier(ModelAdapter& model, const torch::Tensor& images, const torch::Tensor& labels,
                               int64_t batch = 256);

}  // namespace flexquant
