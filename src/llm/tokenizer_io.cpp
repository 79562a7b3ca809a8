// Tokenizer files: llama2.c's tokenizer.bin, SentencePiece's ModelProto (protobuf wire format, only the pieces are
// read) and Hugging Face's tokenizer.json (BPE, Llama's layout), read and written.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "flexquant/error.h"
#include "flexquant/tokenizer.h"

namespace flexquant {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMaxFileBytes = 1ull << 30;  // a tokenizer of 2^24 pieces fits far below
constexpr float kNoMergeScore = -1e9f;

std::string read_file(const std::string& path, const char* expected) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  FQ_CHECK(f.good(), IoError, "cannot open tokenizer -> ", path, " -> expected ", expected);
  const std::streamsize n = f.tellg();
  FQ_CHECK(n >= 0 && static_cast<uint64_t>(n) <= kMaxFileBytes, IoError, "tokenizer ", path, " has ", n,
           " bytes -> allowed at most ", kMaxFileBytes);
  std::string buf(static_cast<size_t>(n), '\0');
  f.seekg(0);
  FQ_CHECK(f.read(buf.data(), n).good(), IoError, "cannot read tokenizer -> ", path);
  return buf;
}

// ------------------------------------------------------------------ SentencePiece ModelProto (protobuf wire format)

// A bounded reader of one protobuf message: varints, fixed32 and length-delimited fields; anything else is an error.
class Wire {
 public:
  Wire(const char* p, size_t n, const std::string& path) : p_(p), end_(p + n), path_(path) {}
  bool done() const { return p_ == end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1, "a varint");
      const auto b = static_cast<unsigned char>(*p_++);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw IoError(detail::concat("tokenizer ", path_, ": a varint longer than 10 bytes -> not a SentencePiece model"));
  }
  float fixed32() {
    need(4, "a float");
    float f;
    std::memcpy(&f, p_, 4);
    p_ += 4;
    return f;
  }
  Wire bytes() {
    const uint64_t n = varint();
    need(n, "a length-delimited field");
    Wire w(p_, static_cast<size_t>(n), path_);
    p_ += n;
    return w;
  }
  std::string str() {
    Wire w = bytes();
    return std::string(w.p_, w.end_);
  }
  void skip(int wire_type) {
    if (wire_type == 0) varint();
    else if (wire_type == 1) need(8, "a fixed64"), p_ += 8;
    else if (wire_type == 2) bytes();
    else if (wire_type == 5) fixed32();
    else
      throw IoError(detail::concat("tokenizer ", path_, ": protobuf wire type ", wire_type,
                                   " -> not a SentencePiece model (expected wire types 0, 1, 2, 5)"));
  }

 private:
  void need(uint64_t n, const char* what) {
    FQ_CHECK(n <= static_cast<uint64_t>(end_ - p_), IoError, "tokenizer ", path_, ": truncated while reading ", what,
             " (", n, " bytes wanted, ", end_ - p_, " left) -> not a complete SentencePiece model");
  }
  const char* p_;
  const char* end_;
  std::string path_;
};

// ------------------------------------------------------------------ tokenizer.json

const json& field(const json& j, const char* key, const std::string& path) {
  FQ_CHECK(j.is_object() && j.contains(key), IoError, "tokenizer.json ", path, " has no \"", key,
           "\" -> expected a Hugging Face tokenizer.json with a BPE model");
  return j.at(key);
}

std::pair<std::string, std::string> merge_pair(const json& m, const std::string& path) {
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) return {m[0], m[1]};
  FQ_CHECK(m.is_string(), IoError, "tokenizer.json ", path, ": a merge is ", m.dump().substr(0, 80),
           " -> expected \"left right\" or [\"left\", \"right\"]");
  const std::string s = m;
  const size_t sp = s.find(' ');
  FQ_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, IoError, "tokenizer.json ", path,
           ": merge \"", s.substr(0, 80), "\" -> expected two pieces separated by one space");
  return {s.substr(0, sp), s.substr(sp + 1)};
}

// Every piece the merges make scores -(rank of its first merge); the rest kNoMergeScore.
std::vector<float> scores_from_merges(const json& merges, const std::map<std::string, int64_t>& id_of,
                                      size_t n, const std::string& path) {
  std::vector<float> scores(n, kNoMergeScore);
  FQ_CHECK(merges.is_array(), IoError, "tokenizer.json ", path, ": model.merges is not an array");
  float rank = 0;
  for (const json& m : merges) {
    const auto [l, r] = merge_pair(m, path);
    auto it = id_of.find(l + r);
    FQ_CHECK(id_of.count(l) && id_of.count(r) && it != id_of.end(), IoError, "tokenizer.json ", path, ": merge \"",
             l.substr(0, 40), " ", r.substr(0, 40), "\" names a piece the vocabulary lacks -> a corrupt tokenizer.json");
    if (scores[it->second] == kNoMergeScore) scores[it->second] = -rank;
    rank += 1;
  }
  return scores;
}

// Merges for a SentencePiece vocabulary, as Hugging Face's converter makes them: every split of a normal piece into two
// pieces, ordered by the piece's score (highest first), then by id.
json merges_of(const Tokenizer& tok) {
  struct M {
    float score;
    int32_t id, left, right;
  };
  std::vector<M> ms;
  for (int32_t id = 259; id < tok.vocab_size(); ++id) {
    const std::string& p = tok.piece(id);
    for (size_t i = 1; i < p.size(); ++i) {
      if ((static_cast<unsigned char>(p[i]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      const int32_t l = tok.lookup(p.substr(0, i)), r = tok.lookup(p.substr(i));
      if (l >= 0 && r >= 0) ms.push_back({tok.score(id), id, l, r});
    }
  }
  std::stable_sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.id != b.id) return a.id < b.id;
    return a.left < b.left;
  });
  json out = json::array();
  for (const M& m : ms) out.push_back(json::array({tok.spm_piece(m.left), tok.spm_piece(m.right)}));
  return out;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  if (fs::is_directory(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name)) return load((fs::path(path) / name).string());
    throw IoError(detail::concat("folder ", path, " holds no tokenizer.json or tokenizer.model -> pass the tokenizer file"));
  }
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".json") return load_hf_json(path);
  if (ext == ".model") return load_sentencepiece(path);
  return load_llama2c(path);
}

Tokenizer Tokenizer::load_llama2c(const std::string& path) {
  const std::string buf = read_file(path, "llama2.c tokenizer.bin (e.g. tok512.bin)");
  Tokenizer t;
  t.path_ = path;
  t.hash_ = fnv1a64(buf.data(), buf.size());
  size_t pos = 0;
  auto take = [&](void* dst, size_t n, const char* what) {
    FQ_CHECK(pos + n <= buf.size(), IoError, "tokenizer truncated -> ", path, " ends at byte ", buf.size(),
             " while reading ", what, " of token ", t.vocab_.size(), " -> expected llama2.c format "
             "(int32 max_len, then float score, int32 len, bytes per token)");
    std::memcpy(dst, buf.data() + pos, n);
    pos += n;
  };
  take(&t.max_token_length_, 4, "max_token_length");
  while (pos < buf.size()) {
    float score;
    int32_t len;
    take(&score, 4, "score");
    take(&len, 4, "length");
    FQ_CHECK(len >= 0 && len <= 4096, IoError, "tokenizer ", path, ": token ", t.vocab_.size(), " has length ", len,
             " -> allowed 0..4096; hint: not a llama2.c tokenizer.bin");
    std::string s(static_cast<size_t>(len), '\0');
    take(s.data(), static_cast<size_t>(len), "bytes");
    t.index_.emplace(s, static_cast<int32_t>(t.vocab_.size()));  // first id wins on duplicates
    t.vocab_.push_back(std::move(s));
    t.scores_.push_back(score);
  }
  FQ_CHECK(t.vocab_.size() >= 259, IoError, "tokenizer ", path, " has ", t.vocab_.size(),
           " tokens -> expected >= 259 (<unk>, <s>, </s>, 256 byte tokens)");
  return t;
}

Tokenizer Tokenizer::load_sentencepiece(const std::string& path) {
  const std::string buf = read_file(path, "a SentencePiece .model");
  std::vector<std::string> pieces;
  std::vector<float> scores;
  Wire model(buf.data(), buf.size(), path);
  while (!model.done()) {
    const uint64_t key = model.varint();
    if (key >> 3 != 1 || (key & 7) != 2) {  // ModelProto.pieces = 1; trainer and normalizer specs are not needed
      model.skip(static_cast<int>(key & 7));
      continue;
    }
    Wire sp = model.bytes();
    std::string piece;
    float score = 0;
    while (!sp.done()) {
      const uint64_t k = sp.varint();
      if (k == (1 << 3 | 2)) piece = sp.str();
      else if (k == (2 << 3 | 5)) score = sp.fixed32();
      else sp.skip(static_cast<int>(k & 7));
    }
    pieces.push_back(std::move(piece));
    scores.push_back(score);
  }
  Tokenizer t = from_spm_pieces(pieces, std::move(scores), path);
  t.path_ = path;
  t.hash_ = fnv1a64(buf.data(), buf.size());
  return t;
}

Tokenizer Tokenizer::load_hf_json(const std::string& path) {
  const std::string buf = read_file(path, "a Hugging Face tokenizer.json");
  json j;
  try {
    j = json::parse(buf);
  } catch (const json::exception& e) {
    throw IoError(detail::concat("tokenizer.json ", path, " is not valid JSON: ", e.what()));
  }
  const json& model = field(j, "model", path);
  const json& type = field(model, "type", path);
  FQ_CHECK(type == "BPE", ModelError, "tokenizer.json ", path, ": model.type is ", type.dump(),
           " -> supported: BPE (Llama's SentencePiece-style vocabulary with byte fallback)");
  const bool byte_fallback = model.contains("byte_fallback") && model.at("byte_fallback").is_boolean() &&
                             model.at("byte_fallback").get<bool>();
  FQ_CHECK(byte_fallback, ModelError, "tokenizer.json ", path,
           ": model.byte_fallback is not true -> supported: Llama's BPE with byte fallback (<0x00>..<0xFF> pieces)");
  const json& vocab = field(model, "vocab", path);
  FQ_CHECK(vocab.is_object() && !vocab.empty(), IoError, "tokenizer.json ", path, ": model.vocab is not a non-empty object");
  std::map<std::string, int64_t> id_of;
  std::vector<std::string> pieces(vocab.size());
  std::vector<bool> seen(vocab.size(), false);
  for (const auto& [piece, id] : vocab.items()) {
    FQ_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < static_cast<int64_t>(vocab.size()) &&
                 !seen[id.get<size_t>()],
             IoError, "tokenizer.json ", path, ": piece \"", piece.substr(0, 40), "\" has id ", id.dump(),
             " -> ids must be 0..", vocab.size() - 1, ", each once");
    seen[id.get<size_t>()] = true;
    pieces[id.get<size_t>()] = piece;
    id_of[piece] = id.get<int64_t>();
  }
  std::vector<float> scores = scores_from_merges(field(model, "merges", path), id_of, pieces.size(), path);
  Tokenizer t = from_spm_pieces(pieces, std::move(scores), path);
  t.path_ = path;
  t.hash_ = fnv1a64(buf.data(), buf.size());
  return t;
}

void save_hf_tokenizer_json(const Tokenizer& tok, const std::string& path) {
  const std::string space = "\xE2\x96\x81";
  json vocab = json::object();
  for (int32_t id = 0; id < tok.vocab_size(); ++id) vocab[tok.spm_piece(id)] = id;
  json added = json::array();
  for (int32_t id : {Tokenizer::kUnk, Tokenizer::kBos, Tokenizer::kEos})
    added.push_back({{"id", id}, {"content", tok.spm_piece(id)}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Sequence"},
                      {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", space}},
                                                   {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", {{"type", "TemplateProcessing"},
                          {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                          {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                                {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
                                                {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
                          {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {Tokenizer::kBos}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", {{"type", "Sequence"},
                   {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                                             {{"type", "ByteFallback"}},
                                             {{"type", "Fuse"}},
                                             {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model", {{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", "<unk>"},
                 {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr},
                 {"fuse_unk", true},
                 {"byte_fallback", true},
                 {"ignore_merges", false},
                 {"vocab", vocab},
                 {"merges", merges_of(tok)}}}};
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    FQ_CHECK(f.good(), IoError, "cannot write ", tmp, " -> check that the folder exists and is writable");
    f << j.dump(2) << "\n";
    FQ_CHECK(f.good(), IoError, "writing ", tmp, " failed (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  FQ_CHECK(!ec, IoError, "cannot rename ", tmp, " to ", path, ": ", ec.message());
}

}  // namespace flexquant
