// `flexquant convert`: rewrites a Llama-family checkpoint (llama2.c .bin or HF folder) as a Hugging Face
// folder (config.json + model.safetensors). Thin wrapper over include/flexquant/llama.h.
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/llama.h"

namespace flexquant::cli {
namespace {
namespace fs = std::filesystem;

struct ConvertCmd {
  std::string model, out;
  void run() {
    FQ_CHECK(fs::absolute(out) != fs::absolute(model), ConfigError, "--out \"", out,
             "\" is the input model -> choose another folder");
    auto m = load_language_model(model);
    save_llama_hf(*m, out);
    const LlamaConfig& c = m->config();
    std::cout << "wrote " << out << "/config.json + model.safetensors (dim " << c.dim << ", " << c.n_layers
              << " layers, " << c.n_heads << " heads, " << c.n_kv_heads << " kv heads, vocab " << c.vocab_size
              << (c.tied_classifier ? ", tied classifier" : ", untied classifier") << ")\n";
  }
};

const bool registered = register_command(
    "convert", "Write a llama2.c .bin (or HF folder) as a Hugging Face folder (config.json + model.safetensors)",
    [](CLI::App& app) {
      auto cmd = std::make_shared<ConvertCmd>();
      app.add_option("--model", cmd->model, "llama2.c .bin file or Hugging Face folder")->required();
      app.add_option("--out", cmd->out, "Output folder (created)")->required();
      app.callback([cmd] { cmd->run(); });
    });
}  // namespace
}  // namespace flexquant::cli
