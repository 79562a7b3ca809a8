// Llama checkpoint readers on hostile input (issue #14): sizes in a header or config.json are checked against the
// sane maxima and the tensors actually in the files before anything is allocated from them; every malformed field
// is a ModelError/IoError naming the file and the field.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <functional>

#include "flexquant/error.h"
#include "flexquant/llama.h"
#include "flexquant/safetensors.h"
#include "flexquant/tokenizer.h"
#include "hostile_input.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::le;
using flexquant::testing::write_temp;

namespace {

std::string llama2c_header(int32_t dim, int32_t hidden, int32_t layers, int32_t heads, int32_t kv, int32_t vocab,
                           int32_t seq) {
  return le(dim) + le(hidden) + le(layers) + le(heads) + le(kv) + le(vocab) + le(seq);
}

// A real Hugging Face folder (stories260K converted) with config.json replaced by `edit(config)`.
std::string hf_folder_with(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path dir = fs::path(write_temp(name + "/x", "")).parent_path();
  static std::unique_ptr<LlamaModel> model = load_llama2c(flexquant::testing::shared_path("data/lm/stories260K.bin"));
  save_llama_hf(*model, dir.string());
  nlohmann::json c = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  edit(c);
  std::ofstream(dir / "config.json") << c.dump();
  return dir.string();
}

}  // namespace

TEST(LlamaHostile, Llama2cHeaderBeyondSaneMaximaIsRefusedBeforeSizing) {
  // dim 2^30 x 2^30 x 2^20 layers: the expected-size product overflowed int64 (undefined behaviour) before the fix.
  const std::string p =
      write_temp("huge.bin", llama2c_header(1 << 30, 1 << 30, 1 << 20, 1 << 10, 1 << 10, 512, 256) + std::string(64, 0));
  expect_error<ModelError>([&] { load_llama2c(p); }, {"huge.bin", "dim", "allowed at most"});
  const std::string v = write_temp("vocab.bin", llama2c_header(64, 172, 5, 8, 4, -(1 << 30), 512));
  expect_error<ModelError>([&] { load_llama2c(v); }, {"vocab.bin", "vocab_size", "allowed at most"});
}

TEST(LlamaHostile, HfConfigCannotSizeMemoryAlone) {
  // vocab 2^24 x hidden 4096 = 256 GiB of zeros was allocated before the missing tensors were noticed.
  const std::string dir = hf_folder_with("hf-huge", [](nlohmann::json& c) {
    c["vocab_size"] = 1 << 24;
    c["hidden_size"] = 4096;
    c["num_attention_heads"] = 32;
    c["num_key_value_heads"] = 32;
  });
  expect_error<ModelError>([&] { load_llama_hf(dir); }, {"model.embed_tokens.weight", "has shape", "16777216"});
}

TEST(LlamaHostile, HfConfigFieldsOfTheWrongTypeNameTheKey) {
  // A string where an integer belongs escaped as nlohmann::json::type_error; a float was cast to int64 (UB if huge).
  const std::string s = hf_folder_with("hf-str", [](nlohmann::json& c) { c["num_key_value_heads"] = "four"; });
  expect_error<ModelError>([&] { load_llama_hf(s); }, {"config.json", "num_key_value_heads", "\"four\""});
  const std::string f = hf_folder_with("hf-float", [](nlohmann::json& c) { c["hidden_size"] = 1e30; });
  expect_error<ModelError>([&] { load_llama_hf(f); }, {"config.json", "hidden_size", "expected an integer"});
  const std::string h = hf_folder_with("hf-headdim", [](nlohmann::json& c) { c["head_dim"] = "8"; });
  expect_error<ModelError>([&] { load_llama_hf(h); }, {"config.json", "head_dim"});
  const std::string a = hf_folder_with("hf-array", [](nlohmann::json& c) { c = nlohmann::json::array({1, 2}); });
  expect_error<ModelError>([&] { load_llama_hf(a); }, {"config.json", "not a JSON object"});
}
