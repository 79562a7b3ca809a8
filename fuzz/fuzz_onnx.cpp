// ONNX reader (src/onnx/onnx_graph.cpp, onnx_model.cpp): OnnxModel::load parses the protobuf, folds the constant
// subgraphs (running those nodes) and partitions the graph into units.
#include "flexquant/onnx_model.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("model.onnx", data, size);
  fqfuzz::run([&] { flexquant::OnnxModel::load(path); });
  return 0;
}
