// Recipe: JSON round trip, unknown keys, validation messages, docs/recipe.md in sync with visit().
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "flexquant/error.h"
#include "flexquant/qmodel.h"
#include "flexquant/recipe.h"

using namespace flexquant;

TEST(Recipe, JsonRoundTripKeepsEveryField) {
  Recipe r;
  r.method = "adaround";
  r.weight_bits = 3;
  r.weight_granularity = "group";
  r.weight_group_size = 32;
  r.act_bits = 8;
  r.qdrop = 0.5;
  r.rounder.adaround_lambda = 0.1;
  r.rounder.flexround_s4 = false;
  r.seed = 7;
  Recipe back = Recipe::from_json_text(r.to_json());
  EXPECT_EQ(back.to_json(), r.to_json());
  int fields = 0;
  visit(back, [&](const char*, auto&, const char*) { ++fields; });
  EXPECT_EQ(fields, static_cast<int>(describe_recipe().size()));
  EXPECT_GE(fields, 30);
}

TEST(Recipe, UnknownKeyFailsWithSuggestion) {
  try {
    Recipe::from_json_text(R"({"version": 1, "weight": {"bitz": 4}})");
    FAIL() << "unknown key accepted";
  } catch (const ConfigError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("weight.bitz"), std::string::npos) << m;
    EXPECT_NE(m.find("did you mean \"weight.bits\""), std::string::npos) << m;
  }
}

TEST(Recipe, VersionRequiredAndValuesChecked) {
  EXPECT_THROW(Recipe::from_json_text(R"({"method": "rtn"})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 2})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"bits": 9}})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"bits": "4"}})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "method": "flexroundd"})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text("{\"version\": 1,"), ConfigError);
  // weight.format: a minifloat / power grid of at most 8 bits, symmetric; integers go through weight.bits.
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"format": "fp4_e2m1", "symmetric": false}})"),
               ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"format": "fp16"}})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"format": "int4"}})"), ConfigError);
  EXPECT_THROW(Recipe::from_json_text(R"({"version": 1, "weight": {"format": "fp5_e9m9"}})"), ConfigError);
  auto fp = Recipe::from_json_text(R"({"version": 1, "weight": {"format": "fp8_e4m3", "symmetric": true}})");
  EXPECT_EQ(fp.weight_spec().format.name(), "fp8_e4m3");
  EXPECT_EQ(fp.weight_spec(8).format.name(), "uint8");
  // comments are allowed
  EXPECT_EQ(Recipe::from_json_text("// c\n{\"version\": 1, \"recon\": {\"iters\": 7}}").iters, 7);
}

TEST(Recipe, SetParsesTypedValues) {
  Recipe r;
  r.set("recon.iters", "123");
  r.set("weight.symmetric", "false");
  r.set("recon.lr", "2.5e-3");
  EXPECT_EQ(r.iters, 123);
  EXPECT_FALSE(r.weight_symmetric);
  EXPECT_DOUBLE_EQ(r.lr, 2.5e-3);
  EXPECT_THROW(r.set("recon.iters", "12x"), ConfigError);
  EXPECT_THROW(r.set("no.such", "1"), ConfigError);
}

TEST(Recipe, ShippedRecipesParse) {
  // Every file in recipes/ parses and validates (a new recipe with a typo fails here, not in a benchmark).
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator("recipes"))
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  for (const auto& f : files) {
    EXPECT_NO_THROW(Recipe::from_file(f).validate()) << f;
  }
  for (const char* f : {"recipes/flexround-w4a4.json", "recipes/llm-flexround-w4.json", "recipes/llm-flexround-g32.json"})
    EXPECT_NE(std::find(files.begin(), files.end(), std::string(f)), files.end()) << f << " missing";
}

TEST(Recipe, DocsAreGeneratedFromVisit) {
  std::ifstream f("docs/recipe.md");
  ASSERT_TRUE(f.good()) << "docs/recipe.md missing: regenerate with `flexquant recipe --markdown > docs/recipe.md`";
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), recipe_markdown()) << "docs/recipe.md is stale: run `flexquant recipe --markdown > docs/recipe.md`";
}

TEST(QModel, PackUnpackEveryBitWidthExhaustively) {
  int checked = 0;
  for (int bits = 1; bits <= 8; ++bits) {
    // every code value, at every bit offset
    auto codes = torch::arange(0, 1 << bits, torch::kInt).repeat({9}).to(torch::kUInt8);
    auto packed = pack_codes(codes, bits);
    EXPECT_EQ(packed.numel(), (codes.numel() * bits + 7) / 8);
    auto back = unpack_codes(packed, bits, codes.numel());
    EXPECT_TRUE(torch::equal(back, codes)) << "bits " << bits;
    checked += codes.numel();
  }
  EXPECT_EQ(checked, 9 * (2 + 4 + 8 + 16 + 32 + 64 + 128 + 256));
  EXPECT_THROW(unpack_codes(torch::zeros({3}, torch::kUInt8), 4, 7), IoError);
}

namespace {
std::string read_source(const std::string& rel) {
  std::ifstream in(std::string(FLEXQUANT_SOURCE_DIR) + "/" + rel);
  EXPECT_TRUE(in.good()) << rel;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

// The engine asks the adapter for roles (LayerRole, SiteRole, norm_feeds) and the registry for methods; it names
// no model class, family, site, norm or method. Reads the sources: a policy keyed on a name would come back here.
TEST(EngineSource, NamesNoModelClassFamilyOrSite) {
  for (const char* file : {"src/engine/reconstruct.cpp", "src/engine/qmodel.cpp", "src/engine/recipe.cpp",
                           "src/quant/smoothquant.cpp"}) {
    const std::string src = read_source(file);
    ASSERT_GT(src.size(), 1000u) << file;
    for (const char* banned : {"LlamaModel", "LlamaDecoder", "llama.h", "Cnn", "cnn.h", "ResNet", "MobileNet",
                               "ModelFamily", "family()", "dynamic_cast",
                               "\"k\"", "\"v\"", "attention_norm", "ffn_norm", "\"layers."}) {
      EXPECT_EQ(src.find(banned), std::string::npos) << file << " names \"" << banned << "\"";
    }
  }
}

// No list of method names outside the registry: the engine, the recipe, the pipeline and the CLI ask
// method_info() / methods().
TEST(EngineSource, NamesNoMethod) {
  for (const char* file : {"src/engine/reconstruct.cpp", "src/engine/recipe.cpp", "src/engine/pipeline.cpp",
                           "src/engine/qmodel.cpp", "include/flexquant/recipe.h", "tools/flexquant/cmd_quantize.cpp"}) {
    const std::string src = read_source(file);
    for (const char* banned : {"\"rtn\"", "\"adaround\"", "\"lrq\"", "\"gptq\"", "== \"flexround\"", "rtn |"}) {
      EXPECT_EQ(src.find(banned), std::string::npos) << file << " names method " << banned;
    }
  }
}
