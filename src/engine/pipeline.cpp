// Workloads (CNN image classification, LM perplexity) and the method runner behind the CLI.
#include "flexquant/pipeline.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/types.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "flexquant/cnn.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/gguf_llama.h"
#include "flexquant/gguf_mix.h"
#include "flexquant/llama.h"
#include "flexquant/llamacpp.h"
#include "flexquant/lm_eval.h"
#include "flexquant/onnx_export.h"
#include "flexquant/onnx_model.h"
#include "flexquant/onnxruntime.h"
#include "flexquant/runtime.h"
#include "flexquant/equalize.h"
#include "flexquant/mixed_precision.h"
#include "flexquant/smoothquant.h"
#include "flexquant/tokenizer.h"

namespace flexquant {
namespace fs = std::filesystem;
namespace {

// Runtime formats hold one grid per weight: a method whose weights are sums (multipoint) is refused before any work.
void check_single_grid(const std::string& path, const Recipe& r) {
  FQ_CHECK(method_info(r.method).single_grid, ConfigError, "cannot write \"", path, "\": method ", r.method,
           " makes each weight a sum of several grids, which this format cannot hold -> save an .fqz, or use a "
           "single-grid method (rtn, flexround, gptq, ...)");
}

bool has_extension(const std::string& p, const char* ext) { return fs::path(p).extension() == ext; }

// The output's folder exists and takes a new file (probed with a temporary one), checked before hours of work.
void check_writable(const std::string& path) {
  const fs::path dir = fs::absolute(path).parent_path();
  FQ_CHECK(fs::is_directory(dir), IoError, "cannot write \"", path, "\": folder ", dir.string(), " does not exist -> "
           "create it first");
  const fs::path probe = dir / (".fq_probe_" + std::to_string(::getpid()));
  bool ok = static_cast<bool>(std::ofstream(probe));
  fs::remove(probe);
  FQ_CHECK(ok, IoError, "cannot write \"", path, "\": folder ", dir.string(), " is not writable -> choose another --out");
}

class ImageTask : public Task {
 public:
  explicit ImageTask(const Workload& w) {
    workload_ = w;
    arch_ = w.arch == "auto" && has_extension(w.model, ".onnx") ? "onnx" : w.arch;
    FQ_CHECK(arch_ != "auto", ConfigError, "--arch is required for \"", w.model,
             "\": a safetensors file can hold any image classifier; valid: onnx (an .onnx file), resnet_cifar, resnet18, "
             "resnet50, mobilenet_v2, ...");
    FQ_CHECK(!w.data.empty(), ConfigError, "no evaluation data: pass --data cifar10:<dir> (or fashion-mnist:<dir>, "
             "images:<dir>, npy:<images.npy>)");
    data_ = load_dataset(w.data, w.preprocess);
    eval_start_ = w.eval_start;
    FQ_CHECK(eval_start_ >= 1 && eval_start_ < data_.size(), ConfigError, "--split ", eval_start_, " leaves ",
             eval_start_ < 1 ? "no calibration" : "no evaluation", " images in ", w.data, " (", data_.size(),
             " records) -> allowed 1..", data_.size() - 1);
    load_model();  // validates the model file up front, before any work
  }
  std::unique_ptr<ModelAdapter> load_model() const override {
    if (arch_ == "onnx") return OnnxModel::load(workload_.model);
    return load_image_classifier(workload_.model, arch_);
  }
  torch::Tensor calibration(const Recipe& r) const override {
    FQ_CHECK(r.calib_samples <= eval_start_, ConfigError, "calib.samples ", r.calib_samples,
             " would overlap the evaluation images, which start at record ", eval_start_, "; use at most ", eval_start_,
             " or move the split (--split)");
    return data_.images.slice(0, 0, r.calib_samples);
  }
  std::string calibration_description(const Recipe& r) const override {
    return fmt::format("{} records 0-{} ({} images)", workload_.data, r.calib_samples - 1, r.calib_samples);
  }
  std::string evaluation_description() const override {
    auto [b, e] = eval_range();
    return fmt::format("{} records {}-{} ({} images, disjoint from calibration)", workload_.data, b, e - 1, e - b);
  }
  std::string metric_name() const override { return "top-1 %"; }
  bool higher_is_better() const override { return true; }
  double evaluate(ModelAdapter& model, UnitContext& ctx) const override {
    auto [b, e] = eval_range();
    return evaluate_classifier(model, data_.images.slice(0, b, e), data_.labels.slice(0, b, e), ctx).top1;
  }
  Outputs evaluate_outputs(ModelAdapter& model, UnitContext& ctx) const override {
    auto [b, e] = eval_range();
    EvalResult r = evaluate_classifier(model, data_.images.slice(0, b, e), data_.labels.slice(0, b, e), ctx, 256, true);
    return {r.top1, r.logits.to(torch::kFloat64), "per-class logits"};
  }
  int64_t save(ModelAdapter& model, const QuantState& state, const QModelInfo& info, const Recipe& r,
               const std::string& path) const override {
    if (!has_extension(path, ".onnx")) return Task::save(model, state, info, r, path);
    return export_qdq_onnx(workload_.model, model, state, path).bytes;
  }
  void check_output(const std::string& path, const Recipe& r) const override {
    if (!has_extension(path, ".onnx")) return Task::check_output(path, r);
    FQ_CHECK(arch_ == "onnx", ConfigError, "QDQ ONNX is written from an ONNX source model; \"", workload_.model,
             "\" is ", arch_, " safetensors -> quantize the model's .onnx export, or save an .fqz");
    check_single_grid(path, r);
    const std::string why = qdq_spec_mismatch(r.weight_spec());
    FQ_CHECK(why.empty(), ConfigError, "cannot write \"", path, "\" with this recipe: ", why);
    check_writable(path);
  }
  double evaluate_in_runtime(const std::string& path, const std::string& runtime) const override {
    if (runtime != "onnxruntime") return Task::evaluate_in_runtime(path, runtime);
    FQ_CHECK(has_extension(path, ".onnx"), ConfigError, "ONNX Runtime runs .onnx files; \"", path, "\" is not one -> "
             "hint: flexquant quantize ... --out model.onnx");
    auto [b, e] = eval_range();
    int64_t correct = 0;
    for (int64_t i = b; i < e; i += 1000) {
      const int64_t j = std::min(e, i + 1000);
      correct += (onnxruntime_run(path, data_.images.slice(0, i, j)).argmax(1) == data_.labels.slice(0, i, j))
                     .sum().item<int64_t>();
    }
    return 100.0 * static_cast<double>(correct) / static_cast<double>(e - b);
  }

 private:
  std::pair<int64_t, int64_t> eval_range() const {
    const int64_t b = eval_start_ + workload_.eval_skip;
    FQ_CHECK(b < data_.size(), ConfigError, "--eval-skip ", workload_.eval_skip,
             " leaves no evaluation images (", data_.size() - eval_start_, " after calibration) -> lower it");
    int64_t e = data_.size();
    if (workload_.eval_limit > 0) e = std::min(e, b + workload_.eval_limit);
    return {b, e};
  }
  ImageDataset data_;
  int64_t eval_start_ = 1024;
};

bool is_gguf(const std::string& p) { return has_extension(p, ".gguf"); }

class LanguageTask : public Task {
 public:
  explicit LanguageTask(const Workload& w) {
    workload_ = w;
    arch_ = "llama";
    FQ_CHECK(!w.data.empty(), ConfigError, "no text for calibration/evaluation: pass --data <text file>, e.g. "
             "../shared/data/lm/tinystories_valid_first.txt");
    FQ_CHECK(fs::exists(w.data), IoError, "text file \"", w.data, "\" does not exist");
    tok_ = std::make_unique<Tokenizer>(load_model_tokenizer(w.model, w.tokenizer));
    max_seq_len_ = load_llama_any(w.model)->config().max_seq_len;
  }
  std::unique_ptr<ModelAdapter> load_model() const override { return load_llama_any(workload_.model); }
  torch::Tensor calibration(const Recipe& r) const override {
    CalibSpec s;
    s.n = r.calib_samples;
    s.len = std::min<int64_t>(r.calib_seq_len, max_seq_len_);
    s.seed = r.seed;
    s.range.first_paragraph = 0;
    s.range.last_paragraph = workload_.calib_paragraphs;
    return calibration_samples(workload_.data, *tok_, s);
  }
  std::string calibration_description(const Recipe& r) const override {
    return fmt::format("{}: {} sequences x {} tokens from paragraphs 0-{} (seed {})", workload_.data, r.calib_samples,
                       std::min<int64_t>(r.calib_seq_len, max_seq_len_), workload_.calib_paragraphs - 1, r.seed);
  }
  PplProtocol protocol() const {
    PplProtocol p;
    p.window = max_seq_len_;
    p.stride = max_seq_len_;
    p.range.first_paragraph = workload_.calib_paragraphs;
    p.max_tokens = workload_.eval_limit > 0 ? workload_.eval_limit : 60000;
    p.skip_tokens = workload_.eval_skip;
    return p;
  }
  std::string evaluation_description() const override {
    return fmt::format("{}: paragraphs {}- (disjoint from calibration); {}", workload_.data, workload_.calib_paragraphs,
                       protocol().describe());
  }
  std::string metric_name() const override { return "perplexity"; }
  bool higher_is_better() const override { return false; }
  double evaluate(ModelAdapter& model, UnitContext& ctx) const override {
    return perplexity(model, workload_.data, *tok_, protocol(), ctx).ppl;
  }
  Outputs evaluate_outputs(ModelAdapter& model, UnitContext& ctx) const override {
    PplResult r = perplexity(model, workload_.data, *tok_, protocol(), ctx);
    return {r.ppl, r.token_nll.unsqueeze(1), "per-token NLL"};
  }
  int64_t save(ModelAdapter& model, const QuantState& state, const QModelInfo& info, const Recipe& r,
               const std::string& path) const override {
    if (!is_gguf(path)) return Task::save(model, state, info, r, path);
    GgufExportOptions o;
    if (r.weight_mix.empty()) {
      o.type = gguf_type_for(r.weight_spec());
      if (!r.mixed_bits.empty())  // a mixed-precision allocation: each tensor on its own grid's type
        for (const auto& [layer, q] : state.weights) o.overrides[gguf_tensor_name(layer + ".weight")] = gguf_type_for(q.spec);
    } else {
      o.type = gguf_mix_base(r.weight_mix);
      for (const auto& [layer, t] : gguf_mix_types(r.weight_mix, model)) o.overrides[gguf_tensor_name(layer + ".weight")] = t;
    }
    o.name = fs::path(workload_.model).stem().string() + " " + recipe_label(r);
    return export_gguf(model, state, *tok_, o, path).bytes;
  }
  void check_output(const std::string& path, const Recipe& r) const override {
    if (!is_gguf(path)) return Task::check_output(path, r);
    check_single_grid(path, r);
    if (r.weight_mix.empty()) {  // ConfigError naming the recipe keys that fix it, for every width the run can use
      gguf_type_for(r.weight_spec());
      if (!r.mixed_bits.empty())
        for (int bits : parse_widths(r.mixed_bits)) {
          WeightQuantSpec s = r.weight_spec();
          s.format = int_weight_format(bits);
          gguf_type_for(s);
        }
    }
    check_writable(path);
  }
  double evaluate_in_runtime(const std::string& path, const std::string& runtime) const override {
    if (runtime != "llama.cpp") return Task::evaluate_in_runtime(path, runtime);
    FQ_CHECK(is_gguf(path), ConfigError, "llama.cpp runs .gguf files; \"", path, "\" is not one -> hint: flexquant "
             "export --to gguf");
    const PplProtocol p = protocol();
    return llamacpp_evaluate(path, corpus_tokens(workload_.data, *tok_, p.range), p, 0, at::get_num_threads()).ppl();
  }

 private:
  std::unique_ptr<Tokenizer> tok_;
  int64_t max_seq_len_ = 512;
};

bool is_language_model_path(const std::string& p) {
  return fs::is_directory(p) || fs::path(p).extension() == ".bin" || fs::path(p).extension() == ".gguf";
}

}  // namespace

std::unique_ptr<Task> make_task(const Workload& w) {
  FQ_CHECK(!w.model.empty(), ConfigError, "no model given: pass --model <file>");
  FQ_CHECK(fs::exists(w.model), IoError, "model \"", w.model, "\" does not exist");
  FQ_CHECK(w.eval_skip >= 0, ConfigError, "--eval-skip ", w.eval_skip, " -> allowed >= 0 (evaluation items to skip)");
  std::string arch = w.arch;
  if (arch == "auto" && is_language_model_path(w.model)) arch = "llama";
  if (arch == "llama") return std::make_unique<LanguageTask>(w);
  return std::make_unique<ImageTask>(w);
}

std::string recipe_label(const Recipe& r) {
  std::string a = r.act_format != "int" ? "[" + r.act_format + "]" : r.act_bits >= 32 ? "32" : std::to_string(r.act_bits);
  std::string w = r.weight_format == "int" ? std::to_string(r.weight_bits) : "[" + r.weight_format + "]";
  if (!r.mixed_bits.empty()) w = fmt::format("{}mix", r.mixed_budget);
  std::string s = fmt::format("{} W{}A{}", r.method, w, a);
  if (r.weight_granularity == "group") s += fmt::format(" g{}", r.weight_group_size);
  if (r.qdrop > 0) s += " +QDrop";
  if (r.pd_weight > 0) s += " +PD";
  if (r.smooth_alpha > 0) s += " +SmoothQuant";
  if (r.cle_iters > 0) s += " +CLE";
  if (r.bias_correction) s += " +BC";
  return s;
}

namespace {

// Measures every hidden layer's sensitivity, allocates widths under mixed.budget and prints the allocation.
std::map<std::string, int> allocate_mixed_precision(ModelAdapter& model, const torch::Tensor& calib,
                                                    const Recipe& recipe, const ProgressFn& progress) {
  const auto sens = measure_sensitivity(model, calib, recipe, parse_widths(recipe.mixed_bits));
  auto bits = allocate_bits(sens, recipe.mixed_budget);
  std::string line = fmt::format("mixed precision: hidden weights average {:.3f} bits (budget {}):",
                                 average_bits(sens, bits), recipe.mixed_budget);
  for (const auto& s : sens) line += fmt::format(" {}={}", s.layer, bits.at(s.layer));
  if (progress) progress(line);
  else log_info(line);
  return bits;
}

// Code bits per hidden weight, averaged over the weights of every hidden layer.
double hidden_code_bits(ModelAdapter& model, const QuantState& state) {
  double bits = 0, weights = 0;
  for (QuantLayer* l : model.all_layers()) {
    auto it = state.weights.find(l->name);
    if (l->role != LayerRole::Hidden || it == state.weights.end()) continue;
    bits += it->second.code_bits_per_weight() * static_cast<double>(l->weight.numel());
    weights += static_cast<double>(l->weight.numel());
  }
  return weights > 0 ? bits / weights : 0;
}

}  // namespace

QuantizeReport quantize(ModelAdapter& model, const torch::Tensor& calib, const Recipe& recipe, QuantState& state,
                        const ProgressFn& progress, int64_t max_units, const CheckpointOptions& checkpoint) {
  if (recipe.smooth_alpha > 0) {
    std::vector<torch::Tensor> batches;
    for (int64_t i = 0; i < calib.size(0); i += 16) batches.push_back(calib.slice(0, i, std::min(i + 16, calib.size(0))));
    state.smooth_scales = smooth_model(model, collect_act_absmax(model, batches), recipe.smooth_alpha);
  }
  if (recipe.cle_iters > 0) state.equalization_scales = equalize_model(model, recipe.cle_iters);
  if (!recipe.mixed_bits.empty()) state.layer_bits = allocate_mixed_precision(model, calib, recipe, progress);
  return quantize_model(model, calib, recipe, state, progress, max_units, checkpoint);
}

MethodResult run_method(const Task& task, const Recipe& recipe, const std::string& out_path,
                        const ProgressFn& progress, const CheckpointOptions& checkpoint) {
  recipe.validate();
  MethodResult r;
  r.label = recipe_label(recipe);
  r.recipe = recipe;
  if (!out_path.empty()) task.check_output(out_path, recipe);  // before the work, not after it
  auto model = task.load_model();
  torch::Tensor calib = task.calibration(recipe);
  QuantState state;
  Stopwatch sw;
  r.report = quantize(*model, calib, recipe, state, progress, 0, checkpoint);
  r.seconds = sw.seconds();
  r.weight_bits = hidden_code_bits(*model, state);
  QuantizedContext ctx(state);
  r.metric = task.evaluate(*model, ctx);
  if (!out_path.empty()) {
    QModelInfo info;
    info.arch = task.arch();
    info.source_model = fs::absolute(task.workload().model).string();
    info.source_hash = file_hash(task.workload().model);
    info.recipe_json = recipe.to_json(-1);
    info.calibration = task.calibration_description(recipe);
    info.report_json = report_to_json(r.report);
    info.extra["evaluation"] = task.evaluation_description();
    info.extra["metric"] = fmt::format("{} {:.4f}", task.metric_name(), r.metric);
    r.size_bytes = task.save(*model, state, info, recipe, out_path);
  }
  if (!checkpoint.path.empty()) fs::remove(checkpoint.path);  // the run is done and its output saved
  return r;
}

int64_t Task::save(ModelAdapter& model, const QuantState& state, const QModelInfo& info, const Recipe& r,
                   const std::string& path) const {
  return save_qmodel(path, model, state, info);
}

void Task::check_output(const std::string& path, const Recipe&) const {
  FQ_CHECK(fs::path(path).extension() == ".fqz", ConfigError, "cannot write \"", path, "\": this ", arch_,
           " model is saved as .fqz", arch_ == "onnx" ? " or .onnx (QDQ)" : arch_ == "llama" ? " or .gguf" : "",
           " -> use one of those extensions");
  check_writable(path);
}

double Task::evaluate_in_runtime(const std::string& path, const std::string& runtime) const {
  throw ConfigError("no runtime \"" + runtime + "\" for " + arch_ + " models -> language models: llama.cpp (.gguf); "
                    "image classifiers: onnxruntime (.onnx)");
}

double evaluate_fp(const Task& task) {
  auto model = task.load_model();
  UnitContext fp;
  return task.evaluate(*model, fp);
}

double evaluate_qmodel(const Task& task, const std::string& fqz_path) {
  auto model = task.load_model();
  QModelInfo info = read_qmodel_info(fqz_path);
  std::string h = file_hash(task.workload().model);
  FQ_CHECK(h == info.source_hash, ModelError, "\"", fqz_path, "\" was quantized from a model with hash ", info.source_hash,
           " but \"", task.workload().model, "\" has hash ", h, "; hint: pass the original FP model with --source");
  QuantState state;
  load_qmodel(fqz_path, *model, state);
  QuantizedContext ctx(state);
  return task.evaluate(*model, ctx);
}

std::string results_table(const Task& task, double fp, const std::vector<MethodResult>& rows) {
  const bool ppl = !task.higher_is_better();
  // Perplexity near 7 needs a third decimal: seeds and grids differ by less than 0.01 at 8 bits.
  const int digits = ppl ? 3 : 2;
  std::string t = fmt::format(
      "| method | {} | delta vs FP | .fqz bytes | quantize time | ms/iter per unit (mean) | code bits / hidden weight |\n"
      "|---|---|---|---|---|---|---|\n",
      task.metric_name());
  t += fmt::format("| FP32 | {:.{}f} | - | - | - | - | 32 |\n", fp, digits);
  for (auto& r : rows) {
    double d = r.metric - fp;
    std::string delta = ppl ? fmt::format("{:+.3f} ({:+.2f} %)", d, 100 * d / fp) : fmt::format("{:+.2f}", d);
    double ms = 0;
    int n = 0;
    for (auto& u : r.report.units)
      if (u.iters > 0) ms += u.ms_per_iter, ++n;
    t += fmt::format("| {} | {:.{}f} | {} | {} | {} | {} | {:.3f} |\n", r.label, r.metric, digits, delta,
                     r.size_bytes ? std::to_string(r.size_bytes) : "-", format_duration(r.seconds),
                     n ? fmt::format("{:.1f}", ms / n) : "-", r.weight_bits);
  }
  return t;
}

std::string unit_cost_table(const std::vector<MethodResult>& rows) {
  std::vector<const MethodResult*> trained;
  for (auto& r : rows)
    if (std::any_of(r.report.units.begin(), r.report.units.end(), [](const UnitReport& u) { return u.iters > 0; }))
      trained.push_back(&r);
  if (trained.empty()) return "";
  std::string t = "| unit |";
  std::string rule = "|---|";
  for (auto* r : trained) t += " " + r->label + " |", rule += "---|";
  t += "\n" + rule + "\n";
  const size_t n_units = trained.front()->report.units.size();
  for (size_t k = 0; k < n_units; ++k) {
    t += "| " + trained.front()->report.units[k].name + " |";
    for (auto* r : trained) {
      if (k >= r->report.units.size()) { t += " - |"; continue; }
      const UnitReport& u = r->report.units[k];
      std::string mem = u.peak_rss_bytes > 0 ? fmt::format("{} MiB", u.peak_rss_bytes >> 20) : "peak n/a";
      t += fmt::format(" {}, {:.1f} ms/it, {} |", format_duration(u.seconds), u.ms_per_iter, mem);
    }
    t += "\n";
  }
  return t;
}

}  // namespace flexquant
