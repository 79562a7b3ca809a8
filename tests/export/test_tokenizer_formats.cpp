// The tokenizer's other files (issues #10 and #14): SentencePiece's tok512.model holds exactly tok512.bin's pieces and
// scores; tokenizer.json written from it reads back to the same encoding of real TinyStories text, and a GGUF holding
// that tokenizer (its scores made from the merges) is tokenized alike by llama.cpp itself; load picks the format by
// file and folder; malformed files are errors naming the file and the fix.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "flexquant/error.h"
#include "flexquant/gguf.h"
#include "flexquant/gguf_llama.h"
#include "flexquant/llama.h"
#include "flexquant/llamacpp.h"
#include "flexquant/tokenizer.h"
#include "hostile_input.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::read_bytes;
using flexquant::testing::shared_path;
using flexquant::testing::write_temp;
using nlohmann::json;

namespace {

const Tokenizer& tok512() {
  static const Tokenizer t = Tokenizer::load(shared_path("data/lm/tok512.bin"));
  return t;
}

// The first ~100 KB of TinyStories' validation text, cut at a story boundary.
std::string tinystories() {
  const std::string all = read_bytes(shared_path("data/lm/tinystories_valid_first.txt"));
  return all.substr(0, all.find("\n", 100000));
}

std::string written_json() {
  const std::string path = write_temp("tok/tokenizer.json", "");
  save_hf_tokenizer_json(tok512(), path);
  return path;
}

json read_json(const std::string& path) { return json::parse(read_bytes(path)); }

}  // namespace

TEST(TokenizerFormats, SentencePieceModelHoldsTok512sPiecesAndScores) {
  const Tokenizer spm = Tokenizer::load(shared_path("data/lm/tok512.model"));
  ASSERT_EQ(spm.vocab_size(), tok512().vocab_size());
  for (int32_t id = 0; id < spm.vocab_size(); ++id) {
    EXPECT_EQ(spm.piece(id), tok512().piece(id)) << "id " << id;
    EXPECT_EQ(spm.score(id), tok512().score(id)) << "id " << id;
  }
  const std::string text = tinystories();
  EXPECT_EQ(spm.encode(text), tok512().encode(text));
}

TEST(TokenizerFormats, TokenizerJsonReadsBackToTheSameEncodingOfTinyStories) {
  const std::string path = written_json();
  const json j = read_json(path);
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  EXPECT_EQ(j["model"]["vocab"]["\xE2\x96\x81the"], tok512().lookup(" the"));
  EXPECT_EQ(j["model"]["merges"][0], json::array({"\xE2\x96\x81", "t"})) << "the highest-scoring piece's merge first";

  const Tokenizer back = Tokenizer::load(path);
  ASSERT_EQ(back.vocab_size(), tok512().vocab_size());
  for (int32_t id = 0; id < back.vocab_size(); ++id) EXPECT_EQ(back.piece(id), tok512().piece(id)) << "id " << id;
  const std::string text = tinystories();
  const std::vector<int32_t> ids = tok512().encode(text);
  EXPECT_GT(ids.size(), 20000u);
  EXPECT_EQ(back.encode(text), ids);
  EXPECT_EQ(back.decode(ids), tok512().decode(ids));
  // Merges given as "left right" strings (the older tokenizer.json spelling) read the same.
  json old = j;
  for (json& m : old["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  const std::string old_path = write_temp("tok-old/tokenizer.json", old.dump());
  EXPECT_EQ(Tokenizer::load(old_path).encode(text), ids);
}

TEST(TokenizerFormats, LoadPicksTheFormatByFileAndFolder) {
  const std::string json_path = written_json();
  const std::string folder = fs::path(json_path).parent_path().string();
  EXPECT_EQ(Tokenizer::load(folder).path(), json_path);
  // A model's tokenizer: tokenizer.json in an HF folder; tok512.bin beside a llama2.c file.
  EXPECT_EQ(load_model_tokenizer(folder).path(), json_path);
  EXPECT_EQ(load_model_tokenizer(shared_path("data/lm/stories260K.bin")).path(),
            (fs::path(shared_path("data/lm")) / "tok512.bin").string());
  EXPECT_EQ(load_model_tokenizer(folder, shared_path("data/lm/tok512.model")).path(), shared_path("data/lm/tok512.model"));
  expect_error<IoError>([&] { load_model_tokenizer(folder, folder + "/missing.json"); },
                        {"missing.json", "does not exist", "--tokenizer"});
  const std::string empty = fs::path(write_temp("empty/x", "")).parent_path().string();
  expect_error<IoError>([&] { load_model_tokenizer(empty); }, {"no tokenizer beside model", "--tokenizer"});
  expect_error<IoError>([&] { Tokenizer::load(empty); }, {"no tokenizer.json or tokenizer.model"});
}

TEST(TokenizerFormats, MalformedTokenizerJsonIsAnErrorNamingTheFile) {
  const json good = read_json(written_json());
  auto with = [&](const std::string& name, const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    return write_temp("bad/" + name + ".json", j.dump());
  };
  const std::string not_json = write_temp("bad/not.json", "{\"model\": ");
  expect_error<IoError>([&] { Tokenizer::load(not_json); }, {"not.json", "not valid JSON"});
  const std::string unigram = with("unigram", [](json& j) { j["model"]["type"] = "Unigram"; });
  expect_error<ModelError>([&] { Tokenizer::load(unigram); }, {"unigram.json", "Unigram", "supported: BPE"});
  const std::string no_fallback = with("nofb", [](json& j) { j["model"]["byte_fallback"] = "yes"; });
  expect_error<ModelError>([&] { Tokenizer::load(no_fallback); }, {"byte_fallback"});
  const std::string no_model = with("nomodel", [](json& j) { j.erase("model"); });
  expect_error<IoError>([&] { Tokenizer::load(no_model); }, {"nomodel.json", "no \"model\""});
  const std::string unknown_merge = with("merge", [](json& j) { j["model"]["merges"].push_back({"zz", "qq"}); });
  expect_error<IoError>([&] { Tokenizer::load(unknown_merge); }, {"merge \"zz qq\"", "lacks"});
  const std::string bad_merge = with("merge3", [](json& j) { j["model"]["merges"].push_back("a b c"); });
  expect_error<IoError>([&] { Tokenizer::load(bad_merge); }, {"a b c", "two pieces"});
  const std::string dup_id = with("dup", [](json& j) { j["model"]["vocab"]["\xE2\x96\x81the"] = 5; });
  expect_error<IoError>([&] { Tokenizer::load(dup_id); }, {"dup.json", "each once"});
  const std::string big_id = with("big", [](json& j) { j["model"]["vocab"]["\xE2\x96\x81the"] = 1e12; });
  expect_error<IoError>([&] { Tokenizer::load(big_id); }, {"big.json", "ids must be"});
  // Not Llama's layout: encode's byte fallback (id = byte + 3) would be wrong, so it is refused.
  const std::string swapped = with("swap", [](json& j) {
    j["model"]["vocab"]["<s>"] = 0;
    j["model"]["vocab"]["<unk>"] = 1;
  });
  expect_error<ModelError>([&] { Tokenizer::load(swapped); }, {"swap.json", "piece 0", "Llama's layout"});
}

TEST(TokenizerFormats, MalformedSentencePieceModelIsAnErrorNamingTheFile) {
  const std::string real = read_bytes(shared_path("data/lm/tok512.model"));
  for (size_t cut : {size_t{1}, size_t{100}, real.size() / 2}) {
    const std::string p = write_temp("spm/cut" + std::to_string(cut) + ".model", real.substr(0, real.size() - cut));
    EXPECT_THROW(Tokenizer::load(p), Error) << "cut " << cut;
  }
  const std::string half = write_temp("spm/half.model", real.substr(0, real.size() / 2));
  expect_error<IoError>([&] { Tokenizer::load(half); }, {"half.model", "truncated"});
  const std::string wire = write_temp("spm/wire.model", std::string("\x0B\x00", 2));  // field 1, wire type 3
  expect_error<IoError>([&] { Tokenizer::load(wire); }, {"wire.model", "wire type 3"});
  const std::string few = write_temp("spm/few.model", std::string("\x0A\x05\x0A\x03<s>", 7));
  expect_error<IoError>([&] { Tokenizer::load(few); }, {"few.model", "1 pieces", ">= 259"});
}

TEST(TokenizerFormats, LlamaCppTokenizesAGgufMadeFromTokenizerJsonAsFlexquantDoes) {
  const Tokenizer tok = Tokenizer::load(written_json());
  int differing_scores = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) differing_scores += tok.score(id) != tok512().score(id);
  EXPECT_GT(differing_scores, 100) << "the scores should come from the merges, not from tok512";

  auto model = load_llama2c(shared_path("data/lm/stories260K.bin"));
  GgufExportOptions o;
  o.type = GgmlType::F32;
  const std::string path = write_temp("tok-gguf/stories260K-f32.gguf", "");
  export_gguf(*model, QuantState{}, tok, o, path);

  std::vector<std::string> texts;
  const std::string story = tinystories();
  for (size_t b = 0, e; texts.size() < 60 && (e = story.find('\n', b)) != std::string::npos; b = e + 1)
    if (e > b) texts.push_back(story.substr(b, e - b));
  for (const char* edge : {"h\xC3\xA9llo w\xC3\xB6rld", "  two  spaces ", "emoji \xF0\x9F\x98\x80!", "<s> and </s> as text",
                           "tabs\tand\nnewlines", "x"})
    texts.push_back(edge);
  const auto theirs = llamacpp_tokenize(path, texts);
  ASSERT_EQ(theirs.size(), texts.size());
  size_t tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(theirs[i], tok.encode(texts[i], /*bos=*/false)) << "text " << i << ": \"" << texts[i] << "\"";
    tokens += theirs[i].size();
  }
  EXPECT_GT(tokens, 2000u);
  EXPECT_EQ(load_gguf_tokenizer(path).encode(story), tok.encode(story)) << "the GGUF's vocabulary reads back alike";
}
