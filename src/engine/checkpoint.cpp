// Reconstruction checkpoints (src/engine/checkpoint.h).
#include "checkpoint.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "flexquant/error.h"
#include "flexquant/safetensors.h"
#include "qstate_io.h"

namespace flexquant {
namespace {
using json = nlohmann::json;
constexpr const char* kFormat = "flexquant.checkpoint";
}  // namespace

std::string run_fingerprint(ModelAdapter& model, const Recipe& recipe, const torch::Tensor& calib) {
  torch::Tensor c = calib.detach().to(torch::kCPU).contiguous();
  uint64_t h = fnv1a(kFnv1aStart, c.data_ptr(), c.numel() * c.element_size());
  std::string units;
  for (Unit* u : model.units()) units += u->name() + ",";
  for (QuantLayer* l : model.all_layers()) {
    torch::Tensor w = l->weight.detach().to(torch::kCPU).contiguous();
    h = fnv1a(h, w.data_ptr(), w.numel() * w.element_size());
  }
  return fmt::format("{} | {} | {:016x}", recipe.to_json(-1), units, h);
}

void write_checkpoint(const std::string& path, ModelAdapter& model, const QuantState& state,
                      const std::string& fingerprint, const CheckpointState& c) {
  std::map<std::string, torch::Tensor> tensors;
  json layers, acts;
  write_quant_state(model, state, true, tensors, layers, acts);
  tensors["checkpoint.x_fp"] = c.x_fp;
  tensors["checkpoint.x_q"] = c.x_q;
  tensors["checkpoint.generator_state"] = c.generator_state;
  json reports = json::array();
  for (const auto& r : c.reports) reports.push_back(unit_report_to_json(r));
  save_safetensors(path, tensors,
                   {{"format", kFormat}, {"fingerprint", fingerprint}, {"units_done", std::to_string(c.units_done)},
                    {"reports", reports.dump()}, {"layers", layers.dump()}, {"activations", acts.dump()}});
}

CheckpointState read_checkpoint(const std::string& path, ModelAdapter& model, QuantState& state,
                                const std::string& fingerprint) {
  SafeTensorsFile f = load_safetensors(path);
  auto meta = [&](const char* k) -> const std::string& {
    auto it = f.metadata.find(k);
    FQ_CHECK(it != f.metadata.end(), IoError, "\"", path, "\" is not a flexquant checkpoint (no \"", k,
             "\" metadata) -> remove it, or pass the checkpoint this run wrote");
    return it->second;
  };
  FQ_CHECK(meta("format") == kFormat, IoError, "\"", path, "\" is not a flexquant checkpoint");
  FQ_CHECK(meta("fingerprint") == fingerprint, ConfigError, "checkpoint \"", path, "\" was written by another run "
           "(its recipe, calibration data or model differ from this one's) -> resume with the same command, or delete "
           "the checkpoint to start over");
  QuantState restored;
  read_quant_state(f, json::parse(meta("layers")), json::parse(meta("activations")), model, restored, true);
  // This run applied its pre-passes (smoothing, equalization) before the engine started.
  restored.smooth_scales = state.smooth_scales;
  restored.equalization_scales = state.equalization_scales;
  restored.layer_bits = state.layer_bits;
  state = std::move(restored);
  CheckpointState c;
  c.units_done = std::stoll(meta("units_done"));
  c.x_fp = f.at("checkpoint.x_fp");
  c.x_q = f.at("checkpoint.x_q");
  c.generator_state = f.at("checkpoint.generator_state");
  for (const auto& r : json::parse(meta("reports"))) c.reports.push_back(unit_report_from_json(r));
  return c;
}

}  // namespace flexquant
