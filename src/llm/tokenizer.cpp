// llama2.c BPE tokenizer (Karpathy, llama2.c run.c: build_tokenizer / encode / decode), with the merge loop
// done by a priority queue over adjacent pairs (as SentencePiece's bpe_model.cc does) instead of run.c's
// O(n^2) rescans. Ordering = (score desc, position asc), which is exactly the pair run.c's scan picks
// (highest score, first one found from the left), so both give the same ids.
#include "flexquant/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "flexquant/error.h"

namespace flexquant {

uint64_t fnv1a64(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

std::string Tokenizer::spm_piece(int32_t id) const {
  if (id == kUnk) return "<unk>";
  if (id == kBos) return "<s>";
  if (id == kEos) return "</s>";
  std::string out;
  for (char c : piece(id)) out += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
  return out;
}

Tokenizer Tokenizer::from_spm_pieces(const std::vector<std::string>& pieces, std::vector<float> scores,
                                     const std::string& origin) {
  FQ_CHECK(pieces.size() >= 259, IoError, "tokenizer ", origin, " has ", pieces.size(),
           " pieces -> expected >= 259 (<unk>, <s>, </s>, 256 byte pieces)");
  // encode()'s byte fallback is id = byte + 3: Llama's layout, checked rather than assumed.
  const char* special[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; ++i)
    FQ_CHECK(pieces[i] == special[i], ModelError, "tokenizer ", origin, ": piece ", i, " is \"", pieces[i],
             "\" -> expected \"", special[i], "\" (Llama's layout: <unk>, <s>, </s>, then <0x00>..<0xFF>)");
  for (int b = 0; b < 256; ++b) {
    char want[8];
    std::snprintf(want, sizeof want, "<0x%02X>", b);
    FQ_CHECK(pieces[3 + b] == want, ModelError, "tokenizer ", origin, ": piece ", 3 + b, " is \"", pieces[3 + b],
             "\" -> expected \"", want, "\" (Llama's layout: <unk>, <s>, </s>, then <0x00>..<0xFF>)");
  }
  std::vector<std::string> own;
  own.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    std::string p = pieces[i];
    if (i == kBos) p = "\n<s>\n";
    else if (i == kEos) p = "\n</s>\n";
    else
      for (size_t pos; (pos = p.find("\xE2\x96\x81")) != std::string::npos;) p.replace(pos, 3, " ");
    own.push_back(std::move(p));
  }
  return from_pieces(std::move(own), std::move(scores), origin);
}

Tokenizer Tokenizer::from_pieces(std::vector<std::string> pieces, std::vector<float> scores, const std::string& origin) {
  FQ_CHECK(pieces.size() == scores.size() && pieces.size() >= 259, IoError, "tokenizer ", origin, " has ",
           pieces.size(), " pieces and ", scores.size(), " scores -> expected equal counts >= 259");
  Tokenizer t;
  t.path_ = origin;
  for (size_t i = 0; i < pieces.size(); ++i) {
    t.max_token_length_ = std::max<int32_t>(t.max_token_length_, static_cast<int32_t>(pieces[i].size()));
    t.hash_ = fnv1a64(pieces[i].data(), pieces[i].size(), t.hash_ ? t.hash_ : 1469598103934665603ull);
    t.index_.emplace(pieces[i], static_cast<int32_t>(i));
  }
  t.vocab_ = std::move(pieces);
  t.scores_ = std::move(scores);
  return t;
}

int32_t Tokenizer::lookup(const std::string& piece) const {
  auto it = index_.find(piece);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  std::vector<int32_t> ids;
  if (!text.empty()) {
    int32_t sp = lookup(" ");
    FQ_CHECK(sp >= 0, IoError, "tokenizer ", path_, " has no \" \" piece -> needed for the dummy prefix");
    ids.push_back(sp);
  }
  // One token per UTF-8 character: a byte plus its continuation bytes (at most 4), as run.c groups them.
  for (size_t i = 0; i < text.size();) {
    size_t j = i + 1;
    while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
    int32_t id = lookup(text.substr(i, j - i));
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (size_t k = i; k < j; ++k) ids.push_back(static_cast<unsigned char>(text[k]) + 3);
    }
    i = j;
  }

  // Merges: doubly linked list of symbols + max-heap of candidate pairs, invalidated lazily.
  const int n = static_cast<int>(ids.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    float score;
    int left, right;
    int32_t left_id, right_id, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;  // leftmost first on equal scores
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  auto push = [&](int l) {
    if (l < 0 || next[l] < 0) return;
    int r = next[l];
    int32_t m = lookup(vocab_[ids[l]] + vocab_[ids[r]]);
    if (m >= 0) heap.push({scores_[m], l, r, ids[l], ids[r], m});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<char> alive(n, 1);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || ids[c.left] != c.left_id ||
        ids[c.right] != c.right_id)
      continue;  // stale
    ids[c.left] = c.merged;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }

  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n) + 2);
  if (bos) out.push_back(kBos);
  for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i]) out.push_back(ids[i]);
  if (eos) out.push_back(kEos);
  return out;
}

std::string Tokenizer::decode_piece(int32_t prev, int32_t token) const {
  FQ_CHECK(token >= 0 && token < vocab_size(), ConfigError, "token id ", token, " -> allowed [0, ", vocab_size(), ")");
  const std::string& p = vocab_[token];
  if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>') {
    auto hex = [](char ch) -> int {
      if (ch >= '0' && ch <= '9') return ch - '0';
      if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
      if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
      return -1;
    };
    int hi = hex(p[3]), lo = hex(p[4]);
    if (hi >= 0 && lo >= 0) return std::string(1, static_cast<char>(hi * 16 + lo));
  }
  if (prev == kBos && !p.empty() && p[0] == ' ') return p.substr(1);
  return p;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id != kBos && id != kEos) s += decode_piece(prev, id);
    prev = id;
  }
  return s;
}

}  // namespace flexquant
