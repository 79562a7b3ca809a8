// CIFAR-10 binary record reader (src/data/datasets.cpp): load_cifar10 on one record file.
#include "flexquant/datasets.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("cifar10_test_00.bin", data, size);
  fqfuzz::run([&] { flexquant::load_cifar10(path); });
  return 0;
}
