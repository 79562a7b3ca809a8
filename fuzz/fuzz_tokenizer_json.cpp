// Hugging Face tokenizer.json reader (src/llm/tokenizer_io.cpp):
// Tokenizer::load on the bytes, then one encode/decode round so a vocabulary that loads is also used.
#include "flexquant/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fqfuzz::write_file("tokenizer.json", data, size);
  fqfuzz::run([&] {
    flexquant::Tokenizer t = flexquant::Tokenizer::load(path);
    t.decode(t.encode("Once upon a time, \xC3\xA9t\xC3\xA9 <0x41>.", true, true));
  });
  return 0;
}
