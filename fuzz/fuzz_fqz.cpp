// .fqz reader (src/engine/qmodel.cpp): read_qmodel_info, then load_qmodel into the real ResNet-20
// (../shared/data/cifar10/resnet20.safetensors, or $FLEXQUANT_SHARED/data/...), built once.
#include "flexquant/cnn.h"
#include "flexquant/qmodel.h"
#include "fuzz_common.h"

namespace {
std::unique_ptr<flexquant::ModelAdapter> g_model;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fqfuzz::init();
  const char* env = std::getenv("FLEXQUANT_SHARED");
  const std::string root = env ? env : "../shared";
  g_model = flexquant::load_image_classifier(root + "/data/cifar10/resnet20.safetensors", "resnet_cifar");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("model.fqz", data, size);
  fqfuzz::run([&] { flexquant::read_qmodel_info(path); });
  fqfuzz::run([&] {
    flexquant::QuantState state;
    flexquant::load_qmodel(path, *g_model, state);
  });
  return 0;
}
