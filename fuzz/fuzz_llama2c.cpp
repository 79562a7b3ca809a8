// llama2.c checkpoint reader (src/llm/llama_io.cpp): load_llama2c on a "version 0" .bin.
#include "flexquant/llama.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("model.bin", data, size);
  fqfuzz::run([&] { flexquant::load_llama2c(path); });
  return 0;
}
