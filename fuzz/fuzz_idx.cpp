// Fashion-MNIST IDX reader (src/data/datasets.cpp): load_fashion_mnist on t10k-images + t10k-labels, gzipped or
// plain. Input: the images file, the separator "#labels#", then the labels file; a first byte 'z' in either file
// names it *.gz (gzread reads both kinds, so the byte only picks the file name).
#include "flexquant/datasets.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto [images, labels] = fqfuzz::split(data, size, "#labels#");
  std::error_code ec;
  std::filesystem::remove_all(fqfuzz::scratch() / "idx", ec);
  auto put = [](const std::string& stem, const std::string& bytes) {
    const bool gz = !bytes.empty() && bytes[0] == 'z';
    fqfuzz::write_file("idx/" + stem + (gz ? ".gz" : ""), gz ? bytes.substr(1) : bytes);
  };
  put("t10k-images-idx3-ubyte", images);
  put("t10k-labels-idx1-ubyte", labels);
  fqfuzz::run([&] { flexquant::load_fashion_mnist((fqfuzz::scratch() / "idx").string(), "test"); });
  return 0;
}
