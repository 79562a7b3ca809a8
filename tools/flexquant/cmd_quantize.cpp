// `flexquant quantize | eval | compare | recipe`: thin wrappers over include/flexquant/pipeline.h.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/pipeline.h"
#include "flexquant/qmodel.h"
#include "flexquant/runtime.h"
#include "recipe_flags.h"
#include "workload_flags.h"

namespace flexquant::cli {
namespace {
namespace fs = std::filesystem;

std::shared_ptr<ProgressFn> progress_printer() {
  return std::make_shared<ProgressFn>([](const std::string& line) { std::cerr << line << std::endl; });
}

void print_header(const Task& task, const Recipe& r) {
  std::cout << "flexquant:   " << version() << " built from " << build_commit() << ", " << at::get_num_threads()
            << " threads" << (deterministic() ? " (deterministic)" : "") << "\n";
  std::cout << "calibration: " << task.calibration_description(r) << "\n";
  std::cout << "evaluation:  " << task.evaluation_description() << "\n";
}

struct QuantizeCmd {
  Workload w;
  RecipeFlags flags;
  std::string out;
  bool dry_run = false, no_checkpoint = false;
  CheckpointOptions checkpoint;
  void run() {
    Recipe r = flags.resolve().at(0);
    if (!out.empty()) {
      FQ_CHECK(fs::absolute(out) != fs::absolute(w.model), ConfigError, "--out \"", out,
               "\" is the input model; choose another path");
    }
    auto task = make_task(w);
    print_header(*task, r);
    if (dry_run) {
      std::cout << "recipe: " << r.to_json(-1) << "\n(dry run: nothing quantized or written)\n";
      return;
    }
    if (checkpoint.path.empty() && !out.empty() && !no_checkpoint) checkpoint.path = out + ".ckpt";
    FQ_CHECK(!checkpoint.resume || !checkpoint.path.empty(), ConfigError, "--resume needs the checkpoint: pass --out "
             "(its checkpoint is <out>.ckpt) or --checkpoint <file>");
    if (checkpoint.resume && !fs::exists(checkpoint.path))
      std::cout << "no checkpoint at " << checkpoint.path << ": starting from the first unit\n";
    double fp = evaluate_fp(*task);
    auto res = run_method(*task, r, out, *progress_printer(), checkpoint);
    std::cout << "\n" << results_table(*task, fp, {res});
    if (!out.empty()) std::cout << "wrote " << out << " (" << res.size_bytes << " bytes)\n";
    std::cout << "peak memory " << res.report.peak_rss_bytes / (1 << 20) << " MiB\n";
  }
};

struct EvalCmd {
  Workload w;
  std::string source, runtime = "flexquant";
  void run() {
    bool is_fqz = fs::path(w.model).extension() == ".fqz";
    if (!is_fqz) {
      auto task = make_task(w);
      std::cout << "evaluation: " << task->evaluation_description() << "\n";
      if (runtime != "flexquant") {
        std::cout << fmt::format("{} {} = {:.4f}\n", runtime, task->metric_name(), task->evaluate_in_runtime(w.model, runtime));
        return;
      }
      const auto ext = fs::path(w.model).extension();
      const bool exported = ext == ".gguf" || ext == ".onnx";
      std::cout << fmt::format("{} {} = {:.4f}\n", exported ? "flexquant" : "FP32", task->metric_name(), evaluate_fp(*task));
      return;
    }
    QModelInfo info = read_qmodel_info(w.model);
    Workload fw = w;
    fw.model = source.empty() ? info.source_model : source;
    fw.arch = info.arch;
    auto task = make_task(fw);
    std::cout << "quantized model: " << w.model << " (" << fs::file_size(w.model) << " bytes, source " << fw.model << ")\n";
    std::cout << "calibration: " << info.calibration << "\n";
    std::cout << "evaluation:  " << task->evaluation_description() << "\n";
    double q = evaluate_qmodel(*task, w.model);
    std::cout << fmt::format("{} = {:.4f}\n", task->metric_name(), q);
    if (info.extra.count("metric")) std::cout << "at quantization time: " << info.extra.at("metric") << "\n";
  }
};

struct CompareCmd {
  Workload w;
  RecipeFlags flags;
  std::string out_dir, markdown, out_format = "fqz";
  void run() {
    auto recipes = flags.resolve();
    auto task = make_task(w);
    print_header(*task, recipes.at(0));
    Stopwatch sw;
    double fp = evaluate_fp(*task);
    std::cerr << fmt::format("FP32 {} = {:.2f}\n", task->metric_name(), fp);
    std::vector<MethodResult> rows;
    for (size_t i = 0; i < recipes.size(); ++i) {
      std::cerr << fmt::format("== {} ({}/{}) ==\n", recipe_label(recipes[i]), i + 1, recipes.size());
      std::string out;
      if (!out_dir.empty()) {
        fs::create_directories(out_dir);
        out = (fs::path(out_dir) / fmt::format("{}-{}.{}", i, recipes[i].method, out_format)).string();
      }
      rows.push_back(run_method(*task, recipes[i], out, *progress_printer()));
      std::cerr << fmt::format("{}: {} = {:.2f}\n", rows.back().label, task->metric_name(), rows.back().metric);
    }
    std::string table = results_table(*task, fp, rows);
    std::string costs = unit_cost_table(rows);
    if (!costs.empty())
      table += "\nPer unit: wall time, training ms per iteration, process peak RSS while the unit ran.\n\n" + costs;
    std::cout << "\n" << table << fmt::format("total time {}, peak memory {} MiB\n", format_duration(sw.seconds()),
                                            peak_rss_bytes() / (1 << 20));
    if (!markdown.empty()) {
      std::ofstream f(markdown);
      FQ_CHECK(f.good(), IoError, "cannot write \"", markdown, "\"");
      f << table;
    }
  }
};

struct RecipeCmd {
  RecipeFlags flags;
  bool markdown = false, keys = false, list_methods = false;
  void run() {
    if (list_methods) {
      std::cout << methods_markdown();
      return;
    }
    if (markdown) {
      std::cout << recipe_markdown();
      return;
    }
    if (keys) {
      for (auto& f : describe_recipe()) std::cout << f.key << "\n";
      return;
    }
    std::cout << flags.resolve().at(0).to_json() << "\n";
  }
};

const bool reg_quantize = register_command("quantize", "Quantize a model with a recipe and save a .fqz", [](CLI::App& app) {
  auto c = std::make_shared<QuantizeCmd>();
  add_workload(app, c->w);
  c->flags.add_to(app);
  app.add_option("--out", c->out, "Output quantized model: .fqz, .gguf (a language model on a GGUF grid) or .onnx (QDQ, from an ONNX model)");
  app.add_flag("--dry-run", c->dry_run, "Resolve and print the plan; quantize nothing, write nothing");
  app.add_option("--checkpoint", c->checkpoint.path, "Write a checkpoint after every unit here (default with --out: "
                 "<out>.ckpt; deleted once the output is saved)");
  app.add_flag("--resume", c->checkpoint.resume, "Continue an interrupted run from its checkpoint (same command)");
  app.add_flag("--no-checkpoint", c->no_checkpoint, "Write no checkpoints");
  app.callback([c] { c->run(); });
});

const bool reg_eval = register_command("eval", "Evaluate an FP model or a .fqz on the workload's evaluation split",
                                       [](CLI::App& app) {
  auto c = std::make_shared<EvalCmd>();
  add_workload(app, c->w);
  app.add_option("--source", c->source, "FP model the .fqz was made from (default: the path stored in it)");
  app.add_option("--runtime", c->runtime, "Who computes the metric: flexquant | llama.cpp (a .gguf, through node-llama-cpp) | onnxruntime (a .onnx)");
  app.callback([c] { c->run(); });
});

const bool reg_compare = register_command("compare", "Run several recipes on one workload and print one table",
                                          [](CLI::App& app) {
  auto c = std::make_shared<CompareCmd>();
  add_workload(app, c->w);
  c->flags.add_to(app, /*multiple_recipes=*/true);
  app.add_option("--out-dir", c->out_dir, "Save each quantized model here");
  app.add_option("--out-format", c->out_format, "Format of the saved models: fqz | gguf (language models) | onnx (QDQ, ONNX models)")
      ->check(CLI::IsMember({"fqz", "gguf", "onnx"}));
  app.add_option("--markdown", c->markdown, "Also write the table to this file");
  app.callback([c] { c->run(); });
});

const bool reg_recipe = register_command("recipe", "Print the resolved recipe JSON, its keys, or docs/recipe.md",
                                         [](CLI::App& app) {
  auto c = std::make_shared<RecipeCmd>();
  c->flags.add_to(app);
  app.add_flag("--markdown", c->markdown, "Print the recipe reference (docs/recipe.md)");
  app.add_flag("--keys", c->keys, "List every recipe key");
  app.add_flag("--methods", c->list_methods, "List the registered methods and what each needs");
  app.callback([c] { c->run(); });
});

}  // namespace
}  // namespace flexquant::cli
