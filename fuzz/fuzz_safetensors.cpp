// safetensors reader (src/io/safetensors.cpp): load_safetensors, then the NaN/inf scan the model loaders run.
#include "flexquant/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("in.safetensors", data, size);
  fqfuzz::run([&] {
    flexquant::SafeTensorsFile f = flexquant::load_safetensors(path);
    flexquant::check_finite(f);
  });
  return 0;
}
