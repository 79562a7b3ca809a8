// GGUF reader (src/export/gguf.cpp) and the llama model/tokenizer import on it (src/export/gguf_llama.cpp):
// GgufFile::read, every tensor dequantized, load_gguf_tokenizer, load_llama_gguf.
#include "flexquant/gguf.h"
#include "flexquant/gguf_llama.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("model.gguf", data, size);
  fqfuzz::run([&] {
    flexquant::GgufFile f = flexquant::GgufFile::read(path);
    for (const auto& t : f.tensors) f.tensor(t.name);
  });
  fqfuzz::run([&] { flexquant::load_gguf_tokenizer(path); });
  fqfuzz::run([&] { flexquant::load_llama_gguf(path); });
  return 0;
}
