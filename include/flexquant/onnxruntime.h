// ONNX Runtime as the judge of ONNX files: tools/onnxruntime/run.mjs (onnxruntime-node's CPU library, set up by
// scripts/setup.sh) runs a model on an input and hands back its first output.
#pragma once
#include <torch/types.h>

#include <string>

namespace flexquant {

/// The first output of `model` on `input` (fp32, fed to its first input) as ONNX Runtime computes it (CPU, one
/// thread, graph optimizations off). IoError with the set-up command when node or onnxruntime-node is missing, and
/// naming the command and its output when ONNX Runtime fails.
torch::Tensor onnxruntime_run(const std::string& model, const torch::Tensor& input);

}  // namespace flexquant
