// The GGUF reader, the llama import on it and the .fqz reader on hostile input (issue #14): counts, string lengths,
// dimensions and offsets are checked against the file size before anything is allocated or read; metadata alone
// cannot size a model; a malformed .fqz field is a ModelError naming the file, not a JSON or LibTorch exception.
#include <gtest/gtest.h>

#include "flexquant/cnn.h"
#include "flexquant/error.h"
#include "flexquant/gguf.h"
#include "flexquant/gguf_llama.h"
#include "flexquant/qmodel.h"
#include "flexquant/recipe.h"
#include "flexquant/safetensors.h"
#include "hostile_input.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::fuzz_regression;
using flexquant::testing::le;
using flexquant::testing::write_temp;

namespace {

std::string gguf_string(const std::string& s) { return le<uint64_t>(s.size()) + s; }

// "GGUF", version 3, tensor and kv counts, then `body`.
std::string gguf(uint64_t tensors, uint64_t kvs, const std::string& body) {
  return "GGUF" + le<uint32_t>(3) + le(tensors) + le(kvs) + body;
}

}  // namespace

TEST(GgufHostile, ArrayCountBeyondTheFileIsRefusedBeforeReserving) {
  // 2^24 items were reserved (about 1.7 GB of GgufValue) before the first item was found missing.
  const std::string body = gguf_string("tokenizer.ggml.tokens") + le<uint32_t>(9) /* array */ +
                           le<uint32_t>(8) /* of strings */ + le<uint64_t>(1 << 24);
  const std::string p = write_temp("array.gguf", gguf(0, 1, body));
  expect_error<IoError>([&] { GgufFile::read(p); }, {"array.gguf", "tokenizer.ggml.tokens", "items but", "bytes follow"});
}

TEST(GgufHostile, StringLengthBeyondTheFileIsRefusedBeforeAllocating) {
  const std::string p = write_temp("string.gguf", gguf(0, 1, le<uint64_t>(60'000'000) + "general.name"));
  expect_error<IoError>([&] { GgufFile::read(p); }, {"string.gguf", "metadata key 0", "bytes but"});
}

TEST(GgufHostile, TensorOffsetThatWrapsAroundIsRefused) {
  // offset 2^64 - 32: data_offset + offset + bytes wrapped around and passed the size check.
  const std::string info = gguf_string("w") + le<uint32_t>(1) + le<int64_t>(8) + le<uint32_t>(0) /* F32 */ +
                           le<uint64_t>(~uint64_t{0} - 31);
  std::string file = gguf(1, 0, info);
  file += std::string((32 - file.size() % 32) % 32 + 32, '\0');
  const std::string p = write_temp("offset.gguf", file);
  expect_error<IoError>([&] { GgufFile::read(p); }, {"offset.gguf", "tensor \"w\"", "data section"});
}

TEST(GgufHostile, TensorDimensionsWhoseProductOverflowsAreRefused) {
  // four dimensions of 2^39 each: numel() overflowed int64 (undefined behaviour).
  std::string info = gguf_string("w") + le<uint32_t>(4);
  for (int i = 0; i < 4; ++i) info += le<int64_t>(int64_t{1} << 39);
  info += le<uint32_t>(0) + le<uint64_t>(0);
  const std::string p = write_temp("dims.gguf", gguf(1, 0, info));
  expect_error<IoError>([&] { GgufFile::read(p); }, {"dims.gguf", "tensor \"w\"", "at most 2^48 elements"});
}

TEST(GgufHostile, MetadataCannotSizeTheModelAlone) {
  // embedding_length 2^20 and 4096 blocks with one 4x8 tensor: LlamaModel allocated ~2^52 floats before the fix.
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("llama.embedding_length", GgufValue::u32(1 << 20));
  w.set("llama.feed_forward_length", GgufValue::u32(1 << 20));
  w.set("llama.block_count", GgufValue::u32(4096));
  w.set("llama.attention.head_count", GgufValue::u32(1024));
  w.set("llama.context_length", GgufValue::u32(2048));
  w.add_tensor("token_embd.weight", {8, 4}, GgmlType::F32, std::vector<uint8_t>(8 * 4 * 4, 0));
  const std::string p = write_temp("meta.gguf", "");
  w.write(p);
  expect_error<ModelError>([&] { load_llama_gguf(p); }, {"meta.gguf", "metadata describes a model of", "parameters"});
}

TEST(FqzHostile, MalformedMetadataIsAModelErrorNamingTheFile) {
  // Found by fuzz_fqz: "layers" metadata that is not JSON let nlohmann::json::parse_error escape load_qmodel.
  auto model = load_image_classifier(flexquant::testing::shared_path("data/cifar10/resnet20.safetensors"), "resnet_cifar");
  const std::string first = model->all_layers().at(0)->name;
  std::map<std::string, std::string> meta = {{"format", "flexquant.qmodel"}, {"format_version", "2"},
                                             {"arch", "resnet_cifar"},        {"source_model", "x"},
                                             {"source_hash", "0"},            {"recipe", "{}"},
                                             {"calibration", ""},             {"layers", "{\"" + first + "\": "},
                                             {"activations", "{}"}};
  const std::string p = write_temp("bad.fqz", "");
  auto write = [&] { save_safetensors(p, {{"x", torch::zeros({1})}}, meta); };
  QuantState state;
  write();
  expect_error<ModelError>([&] { load_qmodel(p, *model, state); }, {"bad.fqz", "not a valid .fqz", "parse"});
  meta["layers"] = "{\"" + first + "\": {\"spec\": 3}}";  // a field of the wrong type
  write();
  expect_error<ModelError>([&] { load_qmodel(p, *model, state); }, {"bad.fqz", "not a valid .fqz"});
  meta["format_version"] = "two";  // std::stoi's invalid_argument escaped read_qmodel_info
  write();
  expect_error<ModelError>([&] { read_qmodel_info(p); }, {"bad.fqz", "not a valid .fqz"});
}

TEST(RecipeHostile, NumberBeyondDoubleIsAConfigError) {
  // Found by fuzz_recipe: "bits": 4222...e2222 made nlohmann::json throw out_of_range (406), not parse_error, and it
  // escaped Recipe::from_file.
  expect_error<ConfigError>([&] { Recipe::from_file(fuzz_regression("recipe/number-overflow.json")); },
                            {"number-overflow.json", "not valid JSON", "number overflow"});
}
