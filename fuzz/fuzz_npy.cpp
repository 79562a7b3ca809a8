// NumPy .npy reader (src/data/images.cpp): load_npy, then load_npy_images with the same file as labels (a 1-D
// integer array loads as labels) and with a labels.txt of one label.
#include "flexquant/datasets.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fqfuzz::init();
  fqfuzz::write_file("labels.txt", std::string("0\n"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("x.npy", data, size);
  fqfuzz::run([&] { flexquant::load_npy(path); });
  fqfuzz::run([&] { flexquant::load_npy_images(path, (fqfuzz::scratch() / "labels.txt").string()); });
  return 0;
}
