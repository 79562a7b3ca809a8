// Reconstruction checkpoints: everything a run needs to continue after its last finished unit (the quantized
// units' codes and activation grids, both chains' inputs to the next unit, the batch sampler's state, the
// per-unit reports), written after every unit under a temporary name and renamed. Internal to the engine.
#pragma once
#include <torch/types.h>

#include <string>

#include "flexquant/adapter.h"
#include "flexquant/reconstruct.h"

namespace flexquant {

struct CheckpointState {
  int64_t units_done = 0;
  torch::Tensor x_fp, x_q;         ///< the next unit's inputs on the FP and the quantized chain
  torch::Tensor generator_state;   ///< the batch sampler's CPU generator
  std::vector<UnitReport> reports;
};

/// What makes a checkpoint belong to a run: the resolved recipe, the calibration data and the model's units.
std::string run_fingerprint(ModelAdapter& model, const Recipe& recipe, const torch::Tensor& calib);

void write_checkpoint(const std::string& path, ModelAdapter& model, const QuantState& state,
                      const std::string& fingerprint, const CheckpointState& c);
/// Restores `state` and the finished units' weights into `model`. ConfigError when the checkpoint was written by
/// another run (recipe, calibration data or model differ), IoError for an unreadable file.
CheckpointState read_checkpoint(const std::string& path, ModelAdapter& model, QuantState& state,
                                const std::string& fingerprint);

}  // namespace flexquant
