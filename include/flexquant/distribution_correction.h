// PD-Quant's distribution correction (Liu et al., CVPR 2023; methods.md §4b). Before a unit is reconstructed, its FP
// input is nudged so that the per-sample statistics of every BatchNorm input inside the FP unit move towards the
// BatchNorm's running statistics, held near the original by an l2 constraint. The corrected input x' then gives the
// unit's target, Unit_fp(x'), and is QDrop's FP mixing partner. It needs the BatchNorm statistics the adapter folded
// into its layers (QuantLayer::bn).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "flexquant/adapter.h"

namespace flexquant {

struct DistributionCorrection {
  int64_t iters = 500;     ///< Adam steps per batch
  double lr = 1e-3;        ///< Adam's starting learning rate (ReduceLROnPlateau lowers it)
  double lambda_c = 0.02;  ///< the constraint is lp(x', x) / lambda_c
  int64_t batch = 32;      ///< samples corrected together, in order
  /// Called after each group of batches with the samples done and the total (progress on long corrections).
  std::function<void(int64_t done, int64_t total)> progress;
};

struct CorrectedInput {
  torch::Tensor x;                        ///< x', same shape as the input
  double loss_start = 0, loss_end = 0;    ///< the objective summed over batches, before and after
};

/// True when any of the unit's layers carries folded BatchNorm statistics.
bool has_batchnorm_statistics(Unit& unit);

/// The statistics term: sum over the unit's layers with a folded BatchNorm of ||m - mean||^2 / N +
/// ||s - sqrt(var + 1e-6)||^2 / N, where m, s [N, C] are the per-sample, per-channel mean and
/// sqrt(unbiased variance + 1e-6) over the spatial positions of that BatchNorm's input in the unit's FP forward on x
/// ([N, ...]). Differentiable in x.
torch::Tensor batchnorm_statistics_loss(Unit& unit, const torch::Tensor& x);

/// x' for every batch of opt.batch samples of x, in order: Adam from x for opt.iters steps on
/// batchnorm_statistics_loss(x') + lp(x', x) / lambda_c (lp: squares summed over dim 1, mean over the rest), the
/// learning rate cut tenfold when the objective has not improved (relative 1e-4) for 100 steps, down to 1e-5
/// (PyTorch's ReduceLROnPlateau as PD-Quant uses it). x itself when opt.iters is 0. ModelError when the unit has no
/// BatchNorm statistics; InterruptedError when a stop is requested (SIGINT/SIGTERM) between steps.
CorrectedInput correct_distribution(Unit& unit, const torch::Tensor& x, const DistributionCorrection& opt);

}  // namespace flexquant
