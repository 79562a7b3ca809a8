// Hugging Face folder reader (src/llm/llama_io.cpp): load_llama_hf on <dir>/config.json + <dir>/model.safetensors.
// Input: the config.json text, the separator line "\n#model.safetensors#\n", then the shard's bytes.
#include "flexquant/llama.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto [config, shard] = fqfuzz::split(data, size, "\n#model.safetensors#\n");
  fqfuzz::write_file("hf/config.json", config);
  fqfuzz::write_file("hf/model.safetensors", shard);
  fqfuzz::run([&] { flexquant::load_llama_hf((fqfuzz::scratch() / "hf").string()); });
  return 0;
}
