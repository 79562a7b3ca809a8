// `flexquant export`: write a model (.fqz, GGUF or FP checkpoint) in a runtime's format (GGUF, QDQ ONNX). Thin wrapper over
// include/flexquant/export.h.
#include <fmt/format.h>

#include <iostream>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/export.h"

namespace flexquant::cli {
namespace {

struct ExportCmd {
  GgufFileExport e;
  std::string to = "gguf";
  void run() {
    FQ_CHECK(to == "gguf" || to == "onnx", ConfigError, "--to \"", to, "\" is not supported -> allowed: gguf, onnx");
    if (to == "onnx") return run_onnx();
    GgufExportReport rep = export_gguf_file(e);
    for (const auto& t : rep.tensors)
      std::cout << fmt::format("{:<28} {:<5} {}{}\n", t.name, ggml_type_info(t.type).name, t.source,
                               t.note.empty() ? "" : " (" + t.note + ")");
    for (const auto& w : rep.warnings) std::cout << "warning: " << w << "\n";
    std::cout << fmt::format("wrote {} ({} bytes, {} tensors)\n", e.out, rep.bytes, rep.tensors.size());
  }
  void run_onnx() {
    QdqExportReport rep = export_onnx_file(e.in, e.out);
    std::cout << fmt::format("wrote {} ({} bytes): {} weights as codes + DequantizeLinear, {} in float, {} activation "
                             "sites as Clip/QuantizeLinear/DequantizeLinear, {} BatchNormalization folded\n", e.out,
                             rep.bytes, rep.weights_quantized, rep.weights_float, rep.activation_sites,
                             rep.batchnorms_folded);
  }
};

const bool registered = register_command(
    "export", "Write a model in a runtime's format: GGUF for llama.cpp (a .fqz, GGUF or FP language model), QDQ ONNX (an .fqz of an ONNX model)", [](CLI::App& app) {
      auto c = std::make_shared<ExportCmd>();
      app.add_option("--model", c->e.in, ".fqz (quantized by flexquant), .gguf, llama2.c .bin or HF folder")->required();
      app.add_option("--to", c->to, "Output format: gguf | onnx");
      app.add_option("--out", c->e.out, "Output file (.gguf, .onnx)")->required();
      app.add_option("--type", c->e.type,
                     "Tensor type of the attention/FFN weights: auto (the .fqz's grid; q8_0 for FP) | f32 | f16 | q4_0 | "
                     "q4_1 | q5_0 | q5_1 | q8_0");
      app.add_option("--tokenizer", c->e.tokenizer, "llama2.c tokenizer .bin (default: the GGUF's own or tok512.bin beside the source)");
      app.add_flag("--exact-fallback", c->e.exact_fallback,
                   "Quantized rows that fit no block of --type: f32 (the exact evaluated weights) instead of f16");
      app.add_option("--quantizer", c->e.quantizer,
                     "Who rounds layers left in FP: flexquant (llama.cpp's reference rounding, ported) | llama.cpp (its "
                     "libggml, needed for --imatrix-data)");
      app.add_option("--imatrix-data", c->e.imatrix_data,
                     "Text to compute llama.cpp importance matrices from (mean squared layer inputs; needs --quantizer llama.cpp)");
      app.add_option("--imatrix-samples", c->e.imatrix_samples, "Calibration sequences for the imatrix (default 512)");
      app.add_option("--imatrix-paragraphs", c->e.imatrix_paragraphs,
                     "Draw imatrix sequences from paragraphs [0, N) of the text (default 2000: disjoint from evaluation)");
      app.callback([c] { c->run(); });
    });

}  // namespace
}  // namespace flexquant::cli
