// Language-model evaluation: tokenized corpora (cached), perplexity under a stated windowing protocol,
// calibration sampling from a paragraph range, greedy generation. Everything runs through a UnitContext so
// a quantized model is evaluated by the same code as the FP one.
//
// Corpus model: a text file is split into paragraphs at blank lines (lines that are empty or whitespace
// only); each paragraph is trimmed and empty ones are dropped. Paragraph i is addressed by its index in
// that list, so "paragraphs [a, b)" names a fixed part of the file (use disjoint ranges for calibration
// and evaluation).
//
// Token cache: tokenize_paragraphs() keeps every tokenized file in memory for the life of the process,
// keyed by (FNV-1a hash of the file bytes, tokenizer hash). With a non-empty cache_dir it also reads /
// writes `<cache_dir>/<text hash>-<tokenizer hash>.tok` (int32 count per paragraph then its ids, after an
// 8-byte magic "FQTOK001"); a file whose key matches is trusted, anything unreadable is rebuilt.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/tokenizer.h"

namespace flexquant {

/// Paragraphs of a text file (see the corpus model above). Throws IoError if unreadable.
std::vector<std::string> read_paragraphs(const std::string& path);

/// Token ids of every paragraph of `path`, each WITHOUT BOS (the dummy-prefix space is included).
/// Cached in memory (and on disk when cache_dir is non-empty; default "" = memory only).
const std::vector<std::vector<int32_t>>& tokenize_paragraphs(const std::string& path, const Tokenizer& tok,
                                                             const std::string& cache_dir = "");

/// Which tokens of a file, and how they are laid out as one stream.
struct CorpusRange {
  int64_t first_paragraph = 0;    ///< first paragraph index (>= 0)
  int64_t last_paragraph = -1;    ///< one past the last paragraph; -1 = end of file
  bool bos_per_paragraph = true;  ///< true: each paragraph starts with its own BOS (llama2.c training
                                  ///< layout); false: a single BOS, then the paragraphs back to back
};

/// The concatenated token stream of a paragraph range, int64 [N]. ConfigError for an empty/invalid range.
torch::Tensor corpus_tokens(const std::string& path, const Tokenizer& tok, const CorpusRange& range = {},
                            const std::string& cache_dir = "");

/// Perplexity protocol. The stream (corpus_tokens(range)) is cut to its first max_tokens tokens, then
/// window k feeds tokens [k*stride, k*stride + window) and scores next-token predictions for the positions
/// not scored by an earlier window: with stride == window (the default) each window scores window-1
/// predictions (its first token has no context) - the README protocol of stories260K. A trailing partial
/// window (>= 2 tokens) is evaluated too.
struct PplProtocol {
  int64_t window = 512;       ///< tokens per forward, 2..model max_seq_len
  int64_t stride = 512;       ///< step between window starts, 1..window
  CorpusRange range;          ///< which paragraphs, BOS layout
  int64_t max_tokens = 0;     ///< use only the first max_tokens tokens (after skip_tokens); 0 = all
  int64_t batch = 1;          ///< windows per forward where they are not scored one per thread (GPU, unforkable
                              ///< contexts: UnitContext::fork); >= 1
  int64_t skip_tokens = 0;    ///< drop this many tokens from the stream's start first (a validation slice)
  /// One line stating the protocol, printed beside every perplexity.
  std::string describe() const;
  void validate() const;      ///< ConfigError on out-of-range fields
};

struct PplResult {
  double nll = 0;            ///< mean negative log-likelihood, nats per scored token
  double ppl = 0;            ///< exp(nll)
  int64_t tokens_scored = 0; ///< predictions averaged
  int64_t stream_tokens = 0; ///< tokens in the (cut) stream
  int64_t windows = 0;
  double seconds = 0;        ///< wall time of the forwards
  std::string protocol;      ///< PplProtocol::describe()
  torch::Tensor token_nll;   ///< [tokens_scored] float64 CPU: each scored prediction's NLL, in stream order
};

/// The stream the protocol scores: skip_tokens dropped, then cut to max_tokens. ConfigError when < 2 tokens remain.
torch::Tensor ppl_stream(const torch::Tensor& stream, const PplProtocol& protocol);
/// One forward of the protocol: tokens [s, e) of the cut stream; predictions of positions lo..e-1 are scored.
struct PplWindow {
  int64_t s, e, lo;
};
std::vector<PplWindow> ppl_windows(int64_t stream_tokens, const PplProtocol& protocol);

/// Perplexity of `model` over a token stream [N] under the protocol (its `range` is ignored here).
PplResult perplexity(ModelAdapter& model, const torch::Tensor& stream, const PplProtocol& protocol, UnitContext& ctx);
/// Perplexity on a text file: corpus_tokens(path, tok, protocol.range) then the above.
PplResult perplexity(ModelAdapter& model, const std::string& text_path, const Tokenizer& tok,
                     const PplProtocol& protocol, UnitContext& ctx, const std::string& cache_dir = "");

/// Calibration data: n sequences of len tokens drawn from a named text range.
struct CalibSpec {
  int64_t n = 128;        ///< sequences, >= 1
  int64_t len = 512;      ///< tokens per sequence, >= 2 (<= model max_seq_len)
  uint64_t seed = 0;      ///< start offsets come from std::mt19937_64(seed)
  CorpusRange range;      ///< e.g. {0, 100} for calibration, evaluation from paragraph 100 on
};

/// [n, len] int64: sequence i = stream[o_i, o_i + len) at a uniformly drawn offset o_i in [0, N - len].
/// Deterministic in (file, tokenizer, spec). ConfigError if the range holds fewer than len tokens.
torch::Tensor calibration_samples(const std::string& path, const Tokenizer& tok, const CalibSpec& spec,
                                  const std::string& cache_dir = "");

/// Greedy decoding: starting from `prompt` (default {BOS}), appends argmax tokens until `steps` new tokens,
/// a BOS (llama2.c's end-of-story signal) or max_seq_len total tokens. Recomputes the full prefix each step
/// (no KV cache: fine for small models). Returns prompt + generated ids (the stopping BOS excluded).
std::vector<int32_t> generate_greedy(ModelAdapter& model, int64_t max_seq_len, int64_t steps, UnitContext& ctx,
                                     std::vector<int32_t> prompt = {Tokenizer::kBos});

}  // namespace flexquant
