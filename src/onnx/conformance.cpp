// The ONNX project's backend node tests run through flexquant's executor (include/flexquant/onnx.h).
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "flexquant/error.h"
#include "flexquant/onnx.h"

namespace flexquant {
namespace fs = std::filesystem;
namespace {

// "" when equal within tolerance, else a description of the worst element.
std::string compare(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  if (!got.defined()) return what + ": no output";
  if (got.sizes() != want.sizes())
    return fmt::format("{}: shape [{}] vs expected [{}]", what, fmt::join(got.sizes(), ","), fmt::join(want.sizes(), ","));
  if (!want.is_floating_point()) {
    return torch::equal(got.to(want.scalar_type()), want) ? "" : what + ": values differ";
  }
  torch::Tensor g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  torch::Tensor nan_ok = torch::isnan(g) & torch::isnan(w);
  torch::Tensor diff = torch::where(nan_ok, torch::zeros_like(g), (g - w).abs());
  torch::Tensor bad = diff > (1e-4 + 1e-4 * w.abs());
  bad = bad | (torch::isnan(g) & ~torch::isnan(w));
  if (!bad.any().item<bool>()) return "";
  return fmt::format("{}: max |diff| {:.3g} ({} of {} elements out of tolerance)", what, diff.max().item<double>(),
                     bad.sum().item<int64_t>(), bad.numel());
}

OnnxCaseResult run_case(const fs::path& dir) {
  OnnxCaseResult r;
  r.case_name = dir.filename().string();
  OnnxGraph g = OnnxGraph::load((dir / "model.onnx").string());
  std::set<std::string> ops;
  for (const auto& n : g.nodes) ops.insert(n.op);
  r.op = ops.size() == 1 ? *ops.begin() : "";
  for (const auto& set : fs::directory_iterator(dir)) {
    if (!set.is_directory()) continue;
    std::vector<torch::Tensor> ins;
    for (size_t i = 0; i < g.inputs.size(); ++i)
      ins.push_back(onnx_load_tensor_pb((set.path() / fmt::format("input_{}.pb", i)).string()));
    auto env = g.run_all(ins);
    for (size_t i = 0; i < g.outputs.size(); ++i) {
      const auto want = onnx_load_tensor_pb((set.path() / fmt::format("output_{}.pb", i)).string());
      const std::string m = compare(env.at(g.outputs[i]), want, fmt::format("{} output {}", set.path().filename().string(), i));
      if (!m.empty()) {
        r.message = m;
        return r;
      }
    }
  }
  r.passed = true;
  return r;
}

}  // namespace

std::vector<OnnxCaseResult> onnx_node_conformance(const std::string& root) {
  FQ_CHECK(fs::is_directory(root), IoError, "ONNX test data \"", root, "\" does not exist -> apt-get install libonnx-testdata");
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && fs::exists(e.path() / "model.onnx")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  std::vector<OnnxCaseResult> out;
  for (const auto& d : dirs) {
    try {
      out.push_back(run_case(d));
    } catch (const ModelError& e) {
      const std::string m = e.what();
      if (m.find("is not supported") != std::string::npos && m.find("op ") != std::string::npos) continue;  // another op
      out.push_back({d.filename().string(), "", false, m});
    } catch (const std::exception& e) {
      std::string m = e.what();
      out.push_back({d.filename().string(), "", false, m.substr(0, m.find('\n'))});
    }
  }
  return out;
}

std::map<std::string, OnnxOpCount> onnx_conformance_by_op(const std::vector<OnnxCaseResult>& results) {
  std::map<std::string, OnnxOpCount> per_op;
  for (const auto& r : results) {
    auto& c = per_op[r.op.empty() ? "(several ops, or failed at load)" : r.op];
    c.total += 1;
    c.passed += r.passed;
  }
  return per_op;
}

}  // namespace flexquant
