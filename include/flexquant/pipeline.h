// The whole job as library calls: load a model and its data, quantize with a recipe, evaluate, save, compare
// methods on one table. The CLI (`flexquant quantize | eval | compare`) is a thin layer over these.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/datasets.h"
#include "flexquant/qmodel.h"
#include "flexquant/recipe.h"
#include "flexquant/reconstruct.h"

namespace flexquant {

/// What to quantize and on which data.
struct Workload {
  std::string model;          ///< CNN: .onnx or .safetensors; LM: llama2.c .bin, a Hugging Face folder or a .gguf
  std::string arch = "auto";  ///< onnx, resnet_cifar, resnet18, ..., llama; "auto": onnx for .onnx, llama for LMs
  /// CNN: "cifar10:<dir>" | "fashion-mnist:<dir>". LM: a text file (paragraphs separated by blank lines).
  std::string data;
  ImagePreprocess preprocess;  ///< CNN: how image folders / uint8 .npy pixels become inputs
  std::string tokenizer;      ///< LM: tok512.bin-style tokenizer; default: tok512.bin beside the model
  int64_t eval_limit = 0;     ///< CNN: at most this many evaluation images; LM: tokens (0 = all / 60000)
  /// Skip this many evaluation images / tokens first: a validation slice for choosing hyperparameters that
  /// leaves the reported test slice untouched (e.g. --eval-skip 60000 --eval-limit 60000 for an LM).
  int64_t eval_skip = 0;
  /// CNN: images [0, eval_start) are the calibration pool, [eval_start, end) the evaluation set (1,024: the
  /// papers' largest calibration set, so every method in one table is scored on the same images).
  int64_t eval_start = 1024;
  int64_t calib_paragraphs = 200;  ///< LM: paragraphs [0, n) calibrate, [n, end) evaluate (disjoint)
};

/// A loaded workload: the model factory, calibration inputs and the evaluation metric.
class Task {
 public:
  virtual ~Task() = default;
  /// A fresh FP copy of the model (every method starts from the same weights).
  virtual std::unique_ptr<ModelAdapter> load_model() const = 0;
  /// Calibration inputs for a recipe (images [N,C,H,W] or tokens [N,L]).
  virtual torch::Tensor calibration(const Recipe& r) const = 0;
  virtual std::string calibration_description(const Recipe& r) const = 0;
  virtual std::string evaluation_description() const = 0;
  /// "top-1 %" or "perplexity".
  virtual std::string metric_name() const = 0;
  virtual bool higher_is_better() const = 0;
  virtual double evaluate(ModelAdapter& model, UnitContext& ctx) const = 0;
  /// The metric together with the per-sample outputs it was computed from, for comparing output distributions
  /// (precision_sweep): an image classifier's logits [N, classes], a language model's per-token NLL [T, 1].
  struct Outputs {
    double metric = 0;
    torch::Tensor values;  ///< float64, CPU
    std::string what;      ///< "per-class logits", "per-token NLL"
  };
  virtual Outputs evaluate_outputs(ModelAdapter& model, UnitContext& ctx) const = 0;
  /// Writes the quantized model: a .fqz (every task), or a runtime's format by the path's extension where the
  /// task has one (language models: .gguf, the type from the recipe's grid; ONNX image classifiers: QDQ .onnx). Returns the file size.
  virtual int64_t save(ModelAdapter& model, const QuantState& state, const QModelInfo& info, const Recipe& r,
                       const std::string& path) const;
  /// ConfigError when this task cannot write `path` with recipe `r` (its extension names no format the task has, or
  /// the recipe's grid or method is one that format cannot hold), IoError when its folder is missing or not
  /// writable: run_method calls it before quantizing.
  virtual void check_output(const std::string& path, const Recipe& r) const;
  /// The metric of an exported file as the runtime users run it in computes it, on the same evaluation data
  /// (language models: "llama.cpp" on a .gguf; image classifiers: "onnxruntime" on a .onnx). ConfigError naming the runtimes this task has otherwise.
  virtual double evaluate_in_runtime(const std::string& path, const std::string& runtime) const;
  const Workload& workload() const { return workload_; }
  std::string arch() const { return arch_; }

 protected:
  Workload workload_;
  std::string arch_;
};

/// Resolves arch "auto", loads data once. Clear errors for missing files or unknown schemes.
std::unique_ptr<Task> make_task(const Workload& w);

/// One quantized result.
struct MethodResult {
  std::string label;        ///< e.g. "flexround W4A4"
  Recipe recipe;
  double metric = 0;        ///< quantized top-1 % or perplexity
  double seconds = 0;       ///< quantization wall time
  int64_t size_bytes = 0;   ///< .fqz size (0 if not saved)
  /// Code bits per weight of the hidden layers (the adapter's edge layers, kept at weight.first_last_bits, left
  /// out): weight.bits for uniform runs, the allocation's average for mixed precision, more for multipoint sums.
  double weight_bits = 0;
  QuantizeReport report;
};

/// Quantizes a fresh model copy with `recipe`, evaluates it, optionally saves to `out_path` (checked before any
/// work). With a checkpoint path the engine writes a checkpoint after every unit (and continues from it with
/// `resume`); it is deleted once the output is saved.
MethodResult run_method(const Task& task, const Recipe& recipe, const std::string& out_path = "",
                        const ProgressFn& progress = {}, const CheckpointOptions& checkpoint = {});

/// Quantizes the model with the recipe (dispatching GPTQ and SmoothQuant where asked); the library-level
/// equivalent of the engine for every method.
QuantizeReport quantize(ModelAdapter& model, const torch::Tensor& calib, const Recipe& recipe, QuantState& state,
                        const ProgressFn& progress = {}, int64_t max_units = 0, const CheckpointOptions& checkpoint = {});

/// FP metric of the task's model.
double evaluate_fp(const Task& task);

/// Loads a .fqz onto a fresh FP model from the task and evaluates it through the same code path.
double evaluate_qmodel(const Task& task, const std::string& fqz_path);

/// Markdown table: FP row then one row per result (metric, delta vs FP, size, time, code bits per hidden weight).
std::string results_table(const Task& task, double fp_metric, const std::vector<MethodResult>& rows);

/// Markdown table of the cost per reconstruction unit: a row per unit, a column per method that trained
/// (RTN/GPTQ rows have no iterations): unit seconds, training ms per iteration, peak RSS while it ran.
std::string unit_cost_table(const std::vector<MethodResult>& rows);

/// A short label for a recipe: "<method> W<b>A<b>[ +qdrop]".
std::string recipe_label(const Recipe& r);

}  // namespace flexquant
