// `flexquant convert`: rewrites a Llama-family checkpoint (llama2.c .bin or HF folder) as a Hugging Face
// folder (config.json + model.safetensors + tokenizer.json). Thin wrapper over include/flexquant/llama.h.
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/gguf_llama.h"  // load_model_tokenizer
#include "flexquant/llama.h"
#include "flexquant/tokenizer.h"

namespace flexquant::cli {
namespace {
namespace fs = std::filesystem;

struct ConvertCmd {
  std::string model, out, tokenizer;
  void run() {
    FQ_CHECK(fs::absolute(out) != fs::absolute(model), ConfigError, "--out \"", out,
             "\" is the input model -> choose another folder");
    auto m = load_language_model(model);
    const Tokenizer tok = load_model_tokenizer(model, tokenizer);  // before writing: a missing one is an error first
    FQ_CHECK(tok.vocab_size() == m->config().vocab_size, ConfigError, "tokenizer ", tok.path(), " has ",
             tok.vocab_size(), " pieces, the model's vocabulary ", m->config().vocab_size, " -> pass the model's own");
    save_llama_hf(*m, out);
    save_hf_tokenizer_json(tok, (fs::path(out) / "tokenizer.json").string());
    const LlamaConfig& c = m->config();
    std::cout << "wrote " << out << "/config.json + model.safetensors + tokenizer.json (dim " << c.dim << ", " << c.n_layers
              << " layers, " << c.n_heads << " heads, " << c.n_kv_heads << " kv heads, vocab " << c.vocab_size
              << (c.tied_classifier ? ", tied classifier" : ", untied classifier") << ")\n";
  }
};

const bool registered = register_command(
    "convert",
    "Write a llama2.c .bin (or HF folder) as a Hugging Face folder (config.json + model.safetensors + tokenizer.json)",
    [](CLI::App& app) {
      auto cmd = std::make_shared<ConvertCmd>();
      app.add_option("--model", cmd->model, "llama2.c .bin file or Hugging Face folder")->required();
      app.add_option("--out", cmd->out, "Output folder (created)")->required();
      app.add_option("--tokenizer", cmd->tokenizer,
                     "Tokenizer to write as tokenizer.json: tokenizer.json, a SentencePiece .model or llama2.c tok512.bin "
                     "(default: the one in or beside the model)");
      app.callback([cmd] { cmd->run(); });
    });
}  // namespace
}  // namespace flexquant::cli
