// `flexquant generate`: greedy decoding from BOS (or a prompt) with a Llama-family model. Thin wrapper over
// include/flexquant/lm_eval.h.
#include <iostream>

#include "commands.h"
#include "flexquant/gguf_llama.h"  // load_model_tokenizer
#include "flexquant/llama.h"
#include "flexquant/lm_eval.h"
#include "flexquant/runtime.h"
#include "flexquant/tokenizer.h"

namespace flexquant::cli {
namespace {

struct GenerateCmd {
  std::string model, tokenizer, prompt;
  int64_t steps = 256;
  void run() {
    auto m = load_language_model(model);
    Tokenizer tok = load_model_tokenizer(model, tokenizer);
    std::vector<int32_t> start = prompt.empty() ? std::vector<int32_t>{Tokenizer::kBos} : tok.encode(prompt);
    UnitContext fp;
    Stopwatch sw;
    std::vector<int32_t> ids = generate_greedy(*m, m->config().max_seq_len, steps, fp, start);
    std::cout << tok.decode(ids) << std::endl;
    log_info("generated " + std::to_string(ids.size() - start.size()) + " tokens in " + format_duration(sw.seconds()));
  }
};

const bool registered = register_command(
    "generate", "Greedy text generation with a Llama-family model (llama2.c .bin or HF folder)", [](CLI::App& app) {
      auto cmd = std::make_shared<GenerateCmd>();
      app.add_option("--model", cmd->model, "llama2.c .bin file or Hugging Face folder")->required();
      app.add_option("--tokenizer", cmd->tokenizer,
                     "tokenizer.json, a SentencePiece .model or llama2.c tokenizer .bin (default: the one in or beside the "
                     "model)");
      app.add_option("--steps", cmd->steps, "Tokens to generate (default 256; stops early at BOS or the context length)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
      app.add_option("--prompt", cmd->prompt, "Text to continue (default: start from BOS)");
      app.callback([cmd] { cmd->run(); });
    });
}  // namespace
}  // namespace flexquant::cli
