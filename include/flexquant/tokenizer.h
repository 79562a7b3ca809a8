// Llama's SentencePiece BPE tokenizer with byte fallback, read from llama2.c's tokenizer.bin (tok512.bin), a
// SentencePiece .model or a Hugging Face tokenizer.json (scores from merge ranks), and written as tokenizer.json.
//
// encode(text): [BOS] + (" " if text non-empty: SentencePiece's dummy prefix) + one token per UTF-8
// character (byte fallback id = byte + 3 when the character is not in the vocabulary), then repeatedly
// merge the adjacent pair whose concatenation is in the vocabulary with the highest score (leftmost pair on
// ties) - the result of llama2.c's quadratic loop, computed with a priority queue in O(n log n).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace flexquant {

class Tokenizer {
 public:
  static constexpr int32_t kUnk = 0, kBos = 1, kEos = 2;

  /// Reads a tokenizer by its file: a Hugging Face tokenizer.json (*.json), a SentencePiece model (*.model), a folder
  /// holding either, or else llama2.c's tokenizer.bin. IoError naming the file on a missing, truncated or malformed
  /// file, ModelError on a vocabulary without Llama's layout (<unk>, <s>, </s>, then the 256 byte pieces).
  static Tokenizer load(const std::string& path);
  /// llama2.c's format: int32 max_token_length, then per id: float32 score, int32 len, len bytes.
  static Tokenizer load_llama2c(const std::string& path);
  /// A SentencePiece ModelProto (protobuf): every piece's text and score, in id order.
  static Tokenizer load_sentencepiece(const std::string& path);
  /// A Hugging Face tokenizer.json with a BPE model (Llama's layout: "▁" for spaces, byte fallback). Merges become
  /// scores: a piece scores -(rank of the first merge that makes it), which makes SentencePiece's highest-score-first
  /// merging the BPE's lowest-rank-first; pieces no merge makes score -1e9.
  static Tokenizer load_hf_json(const std::string& path);
  /// From pieces in SentencePiece spelling ("▁" for a space, "<unk>", "<s>", "</s>", "<0xXX>"), e.g. a GGUF file's
  /// vocabulary; `origin` names it in errors.
  static Tokenizer from_spm_pieces(const std::vector<std::string>& pieces, std::vector<float> scores,
                                   const std::string& origin);
  /// From pieces and scores in id order (llama2.c spelling: ' ' for U+2581, BOS/EOS as "\n<s>\n" /
  /// "\n</s>\n"), e.g. a GGUF file's vocabulary; `origin` names it in errors.
  static Tokenizer from_pieces(std::vector<std::string> pieces, std::vector<float> scores, const std::string& origin);

  /// Token ids of `text`, with BOS first when `bos` (default true) and EOS last when `eos` (default false).
  std::vector<int32_t> encode(const std::string& text, bool bos = true, bool eos = false) const;
  /// Text of one token given the previous one: the leading space after BOS is stripped and "<0xXX>" byte
  /// tokens become the raw byte, as llama2.c prints them.
  std::string decode_piece(int32_t prev, int32_t token) const;
  /// Concatenated decode_piece over ids (BOS/EOS print nothing).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.size()); }
  const std::string& piece(int32_t id) const { return vocab_.at(id); }
  /// Piece `id` in SentencePiece spelling ("▁" for a space; "<unk>", "<s>", "</s>"), as GGUF and tokenizer.json hold it.
  std::string spm_piece(int32_t id) const;
  float score(int32_t id) const { return scores_.at(id); }
  /// Id of an exact piece, -1 when absent.
  int32_t lookup(const std::string& piece) const;
  /// FNV-1a over the file bytes: identifies the tokenizer in cache keys.
  uint64_t hash() const { return hash_; }
  const std::string& path() const { return path_; }

 private:
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> index_;
  int32_t max_token_length_ = 0;
  uint64_t hash_ = 0;
  std::string path_;
};

/// Writes `tok` as a Hugging Face tokenizer.json: BPE with byte fallback, the normalizer, decoder and BOS
/// post-processor of Llama's, merges made from the pieces (every split of a piece into two pieces, ordered by the
/// piece's score, highest first). Tokenizer::load_hf_json reads it back to the same encoding. IoError when the file
/// cannot be written.
void save_hf_tokenizer_json(const Tokenizer& tok, const std::string& path);

/// FNV-1a 64-bit hash of bytes (used for corpus cache keys).
uint64_t fnv1a64(const void* data, size_t n, uint64_t seed = 1469598103934665603ull);

}  // namespace flexquant
