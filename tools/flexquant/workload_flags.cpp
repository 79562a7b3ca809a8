// Workload flags (see workload_flags.h).
#include "workload_flags.h"

#include "flexquant/error.h"

namespace flexquant::cli {
namespace {

// --mean/--std arrive as lists; the workload holds them as one optional Normalization.
struct NormFlags {
  std::vector<double> mean, std;
};

void add_preprocess(CLI::App& app, Workload& w) {
  auto norm = std::make_shared<NormFlags>();
  app.add_option("--resize", w.preprocess.resize, "Images: shorter side to N pixels (bilinear, antialiased)");
  app.add_option("--crop", w.preprocess.crop, "Images: centre crop N x N after resizing");
  app.add_option("--pixel-scale", w.preprocess.scale, "Images: pixel multiplier before mean/std (default 1/255)");
  app.add_option("--mean", norm->mean, "Per-channel mean after scaling (default ImageNet's 0.485 0.456 0.406)");
  app.add_option("--std", norm->std, "Per-channel std after scaling (default ImageNet's 0.229 0.224 0.225)");
  app.add_option("--channel-order", w.preprocess.channel_order, "Images: rgb | bgr");
  app.parse_complete_callback([norm, &w] {
    FQ_CHECK(norm->mean.empty() == norm->std.empty(), ConfigError, "--mean and --std go together -> give both");
    if (!norm->mean.empty()) w.preprocess.norm = Normalization{norm->mean, norm->std};
  });
}

}  // namespace

void add_workload(CLI::App& app, Workload& w, bool model_required) {
  auto* m = app.add_option("--model", w.model, "Model: .onnx or .safetensors (CNN), llama2.c .bin, HF folder or .gguf (LM), or .fqz (eval)");
  if (model_required) m->required();
  app.add_option("--arch", w.arch, "Architecture: onnx, resnet_cifar, resnet18, resnet50, mobilenet_v2, llama (auto for .onnx and LMs)");
  app.add_option("--data", w.data, "Data: cifar10:<dir>, fashion-mnist:<dir>, images:<dir>, npy:<images.npy>, or a text file for LMs")->required();
  app.add_option("--split", w.eval_start, "CNN: records [0,N) are the calibration pool, [N,end) the evaluation set "
                 "(default 1024)");
  add_preprocess(app, w);
  app.add_option("--tokenizer", w.tokenizer, "LM tokenizer: tokenizer.json, a SentencePiece .model or llama2.c tok512.bin (default: tokenizer.json, tokenizer.model or tok512.bin in or beside the model)");
  app.add_option("--eval-limit", w.eval_limit, "Evaluate on at most N images (CNN) or tokens (LM; default 60000)");
  app.add_option("--eval-skip", w.eval_skip,
                 "Skip the first N evaluation images/tokens: a validation slice for tuning (default 0)");
  app.add_option("--calib-paragraphs", w.calib_paragraphs, "LM: paragraphs [0,N) calibrate, the rest evaluate");
}

}  // namespace flexquant::cli
