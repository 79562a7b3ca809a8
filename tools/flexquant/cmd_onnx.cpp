// `flexquant onnx`: an ONNX model through flexquant's executor beside ONNX Runtime, and the ONNX backend node tests
// per op. Thin wrapper over include/flexquant/onnx.h and onnxruntime.h.
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <map>

#include "commands.h"
#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "flexquant/onnx.h"
#include "flexquant/onnxruntime.h"
#include "flexquant/runtime.h"

namespace flexquant::cli {
namespace {

struct OnnxCmd {
  std::string model, data, conformance;
  int64_t skip = 1024, limit = 0, batch = 500;

  void run() {
    std::cout << "flexquant: " << version() << " built from " << build_commit() << ", " << at::get_num_threads()
              << " threads" << (deterministic() ? " (deterministic)" : "") << "\n";
    if (!conformance.empty()) return run_conformance();
    FQ_CHECK(!model.empty() && !data.empty(), ConfigError, "pass --model M.onnx --data cifar10:<dir>, or --conformance <dir>");
    OnnxGraph g = OnnxGraph::load(model);
    ImageDataset d = load_dataset(data);
    const int64_t end = limit > 0 ? std::min(d.size(), skip + limit) : d.size();
    int64_t ours_ok = 0, ort_ok = 0, differ = 0;
    double max_diff = 0;
    for (int64_t b = skip; b < end; b += batch) {
      ImageDataset part = d.slice(b, std::min(end, b + batch));
      torch::Tensor ours = g.run(part.images), theirs = onnxruntime_run(model, part.images);
      max_diff = std::max(max_diff, (ours - theirs).abs().max().item<double>());
      ours_ok += (ours.argmax(1) == part.labels).sum().item<int64_t>();
      ort_ok += (theirs.argmax(1) == part.labels).sum().item<int64_t>();
      differ += (ours.argmax(1) != theirs.argmax(1)).sum().item<int64_t>();
    }
    const double n = static_cast<double>(end - skip);
    std::cout << fmt::format("{}: records {}-{}: top-1 flexquant {:.2f} %, ONNX Runtime {:.2f} %, {} predictions differ, "
                             "max |logit diff| {:.3g}\n", model, skip, end - 1, 100 * ours_ok / n, 100 * ort_ok / n,
                             differ, max_diff);
  }

  void run_conformance() {
    auto results = onnx_node_conformance(conformance);
    const auto per_op = onnx_conformance_by_op(results);
    int passed = 0;
    std::vector<std::string> failures;
    for (const auto& r : results) {
      passed += r.passed;
      if (!r.passed) failures.push_back(r.case_name + ": " + r.message.substr(0, 140));
    }
    std::cout << "| op | cases passed |\n|---|---|\n";
    for (const auto& [op, c] : per_op) std::cout << fmt::format("| {} | {}/{} |\n", op, c.passed, c.total);
    std::cout << fmt::format("\n{} of {} cases pass. Failures:\n\n", passed, results.size());
    for (const auto& f : failures) std::cout << "- " << f << "\n";
  }
};

const bool registered = register_command(
    "onnx", "Run an ONNX model in flexquant and ONNX Runtime side by side, or the ONNX backend node tests", [](CLI::App& app) {
      auto c = std::make_shared<OnnxCmd>();
      app.add_option("--model", c->model, "ONNX model (image classifier)");
      app.add_option("--data", c->data, "cifar10:<dir> | fashion-mnist:<dir>");
      app.add_option("--skip", c->skip, "First record evaluated (default 1024: after the calibration records)");
      app.add_option("--limit", c->limit, "At most this many records (default all)");
      app.add_option("--conformance", c->conformance,
                     "Run the ONNX backend node tests under this folder (/usr/share/libonnx-testdata/data/node)");
      app.callback([c] { c->run(); });
    });

}  // namespace
}  // namespace flexquant::cli
