// llama.cpp as the judge of a GGUF export: flexquant cuts the evaluation text exactly as its own perplexity does
// (ppl_stream / ppl_windows) and asks llama.cpp (node-llama-cpp's prebuilt CPU libraries, tools/llamacpp, set up
// by scripts/setup.sh) for the next-token probabilities of every scored position, with an F32 KV cache and flash
// attention off. llama.cpp quantizes activations to 8 bits inside its quantized matmuls, so its perplexity of a
// file differs slightly from flexquant's of the same weights.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "flexquant/lm_eval.h"

namespace flexquant {

struct LlamaCppResult {
  double nll_sum = 0;
  int64_t scored = 0;
  std::vector<int32_t> greedy;  ///< BOS then greedy tokens (stops at BOS), when asked for
  double nll() const { return scored ? nll_sum / static_cast<double>(scored) : 0; }
  double ppl() const;
};

/// The node script (FLEXQUANT_LLAMACPP_DIR/eval.mjs, default <source>/tools/llamacpp/eval.mjs). IoError with the
/// set-up command when node or node-llama-cpp is missing.
std::string llamacpp_script();

/// Perplexity windows of `stream` under `protocol` (and `greedy_steps` greedy tokens from BOS) as llama.cpp
/// computes them for the GGUF file. IoError naming the command and its output when llama.cpp fails.
LlamaCppResult llamacpp_evaluate(const std::string& gguf, const torch::Tensor& stream, const PplProtocol& protocol,
                                 int64_t greedy_steps = 0, int threads = 1);

/// llama.cpp's tokenization of each text with the GGUF file's vocabulary (no BOS, no special tokens parsed), to check
/// that an exported tokenizer encodes as flexquant's does.
std::vector<std::vector<int32_t>> llamacpp_tokenize(const std::string& gguf, const std::vector<std::string>& texts);

}  // namespace flexquant
