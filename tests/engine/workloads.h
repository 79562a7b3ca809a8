// The real workloads the engine tests run on, with a short evaluation: ResNet-20 on CIFAR-10, stories260K on
// TinyStories, ResNet-20's ONNX export.
#pragma once
#include "flexquant/pipeline.h"
#include "test_data.h"

namespace flexquant::testing {

inline Workload resnet20_workload(int64_t images) {
  Workload w;
  w.model = shared_path("data/cifar10/resnet20.safetensors");
  w.arch = "resnet_cifar";
  w.data = "cifar10:" + shared_path("data/cifar10");
  w.eval_limit = images;
  return w;
}

inline Workload resnet20_onnx_workload(int64_t images) {
  Workload w = resnet20_workload(images);
  w.model = shared_path("data/cifar10/resnet20.onnx");
  w.arch = "auto";
  return w;
}

inline Workload stories_workload(int64_t tokens) {
  Workload w;
  w.model = shared_path("data/lm/stories260K.bin");
  w.data = shared_path("data/lm/tinystories_valid_first.txt");
  w.eval_limit = tokens;
  return w;
}

}  // namespace flexquant::testing
