// `convert` and `generate` on the real stories260K: the Hugging Face folder convert writes carries tokenizer.json, and
// generate finds it there, giving the same text as the llama2.c file with tok512.bin.
#include <gtest/gtest.h>

#include <filesystem>
#include <unistd.h>

#include "cli_runner.h"
#include "test_data.h"

using flexquant::testing::run_cli;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

TEST(CliLlm, ConvertWritesTokenizerJsonThatGenerateFinds) {
  const fs::path out = fs::temp_directory_path() / ("fq_cli_hf_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string model = shared_path("data/lm/stories260K.bin");
  auto conv = run_cli("convert --model " + model + " --out " + out.string());
  ASSERT_EQ(conv.code, 0) << conv.out;
  EXPECT_NE(conv.out.find("tokenizer.json"), std::string::npos) << conv.out;
  ASSERT_TRUE(fs::exists(out / "tokenizer.json"));

  auto from_bin = run_cli("-q --threads 1 generate --model " + model + " --tokenizer " + shared_path("data/lm/tok512.bin") +
                          " --steps 40 --prompt 'Once upon a time'");
  auto from_hf = run_cli("-q --threads 1 generate --model " + out.string() + " --steps 40 --prompt 'Once upon a time'");
  ASSERT_EQ(from_bin.code, 0) << from_bin.out;
  ASSERT_EQ(from_hf.code, 0) << from_hf.out;
  EXPECT_GT(from_bin.out.size(), 60u) << from_bin.out;
  EXPECT_NE(from_bin.out.find("Once upon a time"), std::string::npos) << from_bin.out;
  EXPECT_EQ(from_hf.out, from_bin.out);

  auto missing = run_cli("convert --model " + model + " --out " + (out / "x").string() + " --tokenizer /nonexistent.json");
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.out.find("/nonexistent.json"), std::string::npos) << missing.out;
  EXPECT_NE(missing.out.find("--tokenizer"), std::string::npos) << missing.out;
  EXPECT_FALSE(fs::exists(out / "x")) << "nothing is written when the tokenizer is missing";
  fs::remove_all(out);
}
