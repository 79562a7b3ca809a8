// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh — ICLR 2023, arXiv 2210.17323; methods.md §7.2, §10.13).
// Algorithm 1 of the paper with the reference implementation's details (gptq.py `fasterquant`):
//   H ← H + λ·mean(diag H)·I,  U = chol(H⁻¹)ᵀ (upper),
//   for each column j: q_j = Quant(w_j), e_j = (w_j − q_j)/U_jj, W[:, j:] −= e_j·U[j, j:]
// with updates to columns outside the current block of B columns deferred to one GEMM per block.
// Invariants: everything runs in fp32 (TF32 does not exist on CPU; on CUDA the caller must keep it off);
// the codes follow quantizer.h's grid so GPTQ output is an ordinary QuantizedTensor; with H = c·I no error
// is propagated (U is diagonal) and the result equals quantize_rtn bit for bit.
#include "flexquant/gptq.h"

#include <torch/nn/functional/fold.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant {

// ---------------------------------------------------------------------------------------------------
// Hessian accumulation

HessianAccumulator::HessianAccumulator(int64_t columns) : cols_(columns) {
  FQ_CHECK(columns > 0, ConfigError, "HessianAccumulator: column count ", columns, " is not valid -> allowed > 0");
}

HessianAccumulator::HessianAccumulator(const QuantLayer& layer) : kind_(layer.kind) {
  FQ_CHECK(layer.weight.defined() && layer.weight.dim() >= 2, ModelError, "HessianAccumulator: layer '", layer.name,
           "' has no 2-D+ weight -> got ", layer.weight.defined() ? layer.weight.dim() : 0,
           " dims -> allowed [out, in] or [out, in, kh, kw]");
  cols_ = layer.weight.numel() / layer.weight.size(0);
  if (kind_ == LayerKind::Conv2d) {
    FQ_CHECK(layer.weight.dim() == 4, ModelError, "HessianAccumulator: Conv2d layer '", layer.name,
             "' weight has ", layer.weight.dim(), " dims -> allowed 4 [out, in, kh, kw]");
    FQ_CHECK(layer.groups == 1, ModelError, "HessianAccumulator: Conv2d layer '", layer.name, "' has groups = ",
             layer.groups, " -> allowed 1; hint: grouped/depthwise convs need one Hessian per group (not supported)");
    kh_ = layer.weight.size(2);
    kw_ = layer.weight.size(3);
    stride_ = layer.stride;
    padding_ = layer.padding;
    dilation_ = layer.dilation;
  }
}

void HessianAccumulator::add(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  torch::Tensor rows;
  if (kind_ == LayerKind::Conv2d) {
    FQ_CHECK(x.dim() == 4 && x.size(1) * kh_ * kw_ == cols_, ModelError, "HessianAccumulator: conv input shape ",
             x.sizes(), " does not match the weight -> expected [B, ", cols_ / (kh_ * kw_), ", H, W]");
    namespace F = torch::nn::functional;
    // [B, Cin*kh*kw, L]; unfold's channel-major (c, ky, kx) order is weight.flatten(1)'s column order.
    torch::Tensor cols = F::unfold(x.to(torch::kFloat),
                                   F::UnfoldFuncOptions({kh_, kw_}).padding(padding_).stride(stride_).dilation(dilation_));
    rows = cols.transpose(1, 2).reshape({-1, cols_});
  } else {
    FQ_CHECK(x.dim() >= 1 && x.size(-1) == cols_, ModelError, "HessianAccumulator: input shape ", x.sizes(),
             " does not match the layer -> expected [..., ", cols_, "]");
    rows = x.reshape({-1, cols_}).to(torch::kFloat);
  }
  const int64_t m = rows.size(0);
  if (m == 0) return;
  if (!h_.defined()) h_ = torch::zeros({cols_, cols_}, rows.options());
  rows = rows.to(h_.device());
  // Running mean (methods.md §10.8): rescale the old mean, then add the new rows pre-scaled by sqrt(2/n)
  // so the sum never grows with the number of samples.
  h_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + m));
  n_ += m;
  rows = rows * std::sqrt(2.0 / static_cast<double>(n_));
  h_.addmm_(rows.t(), rows);
}

torch::Tensor HessianAccumulator::hessian() const {
  return h_.defined() ? h_ : torch::zeros({cols_, cols_}, torch::kFloat);
}

void HessianCollector::observe(const QuantLayer& layer, int i, const torch::Tensor& x) {
  auto it = acc_.find(layer.name);
  if (it == acc_.end()) it = acc_.emplace(layer.name, HessianAccumulator(layer)).first;
  it->second.add(x);
}

const HessianAccumulator& HessianCollector::at(const std::string& layer_name) const {
  return observed(acc_, layer_name, "HessianCollector");
}

// ---------------------------------------------------------------------------------------------------
// GPTQ

namespace {

// U = upper Cholesky factor of (H + damp·I)⁻¹, or undefined when a factorisation fails.
torch::Tensor inverse_cholesky_upper(const torch::Tensor& H, double abs_damp) {
  torch::Tensor Hd = H.clone();
  Hd.diagonal().add_(abs_damp);
  auto [L, info] = torch::linalg_cholesky_ex(Hd, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int64_t>() != 0) return {};
  torch::Tensor Hinv = torch::cholesky_inverse(L);
  auto [U, info2] = torch::linalg_cholesky_ex(Hinv, /*upper=*/true, /*check_errors=*/false);
  if (info2.item<int64_t>() != 0 || !torch::isfinite(U).all().item<bool>()) return {};
  return U;
}

}  // namespace

QuantizedTensor gptq_quantize(const torch::Tensor& W, const torch::Tensor& H, const WeightQuantSpec& spec,
                              const GptqOptions& opts, GptqStats* stats) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(std::isfinite(opts.damp) && opts.damp > 0, ConfigError, "gptq.damp ", opts.damp,
           " is not valid -> allowed > 0 (fraction of mean diag H); hint: the paper uses 0.01");
  FQ_CHECK(opts.block_size >= 1, ConfigError, "gptq.block_size ", opts.block_size, " is not valid -> allowed >= 1");
  FQ_CHECK(opts.max_damp_retries >= 0 && opts.max_damp_retries <= 8, ConfigError, "gptq.max_damp_retries ",
           opts.max_damp_retries, " is not valid -> allowed 0..8");
  FQ_CHECK(W.defined() && W.dim() >= 2 && W.numel() > 0, ConfigError, "gptq_quantize: weight shape ",
           W.defined() ? W.sizes() : at::IntArrayRef{}, " is not valid -> allowed [out, in, ...] with numel > 0");
  const int64_t rows = W.size(0);
  const int64_t cols = W.numel() / rows;
  FQ_CHECK(H.defined() && H.dim() == 2 && H.size(0) == cols && H.size(1) == cols, ConfigError,
           "gptq_quantize: Hessian shape ", H.defined() ? H.sizes() : at::IntArrayRef{}, " does not match weight ",
           W.sizes(), " -> expected [", cols, ", ", cols, "]; hint: conv Hessians come from im2col inputs");

  const torch::Device dev = W.device();
  torch::Tensor Wf = W.detach().to(torch::kFloat).reshape({rows, cols}).clone();
  torch::Tensor Hf = H.detach().to(dev, torch::kFloat).clone();
  FQ_CHECK(torch::isfinite(Wf).all().item<bool>(), NumericError, "gptq_quantize: weight holds NaN/inf -> allowed finite");
  FQ_CHECK(torch::isfinite(Hf).all().item<bool>(), NumericError,
           "gptq_quantize: Hessian holds NaN/inf -> allowed finite; hint: check the calibration activations");

  const bool per_group = spec.granularity == Granularity::PerGroup;
  const bool fixed = opts.grid.scale.defined();
  const bool static_groups = per_group && (opts.static_groups || opts.act_order || fixed);

  // Grid of the original W (per tensor / per channel), found before dead-column handling as the reference.
  QParams qp = fixed ? opts.grid : init_qparams(Wf, spec);  // per-group: its shape (or the static groups, below)
  const int64_t G = qp.scale.size(1);
  const int64_t g = per_group ? std::min(spec.group_size, cols) : cols;  // quantizer.h: capped at the row length
  FQ_INTERNAL_ASSERT(G == (cols + g - 1) / g, "group layout G=", G, " g=", g, " cols=", cols);

  // Dead columns: the input is always 0 there, so the weight is irrelevant; make H invertible.
  torch::Tensor diag = Hf.diagonal();
  torch::Tensor dead = diag == 0;
  const int64_t n_dead = dead.sum().item<int64_t>();
  if (n_dead > 0) {
    diag.masked_fill_(dead, 1.0);
    Wf.index_put_({torch::indexing::Slice(), dead}, 0.0);
  }
  if (static_groups && !fixed) qp = init_qparams(Wf, spec);  // reference: static groups from W after dead-column zeroing

  torch::Tensor perm, invperm;
  std::vector<int64_t> perm_host;  // read per column: keep it off the device
  if (opts.act_order) {
    perm = std::get<1>(torch::sort(Hf.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    invperm = torch::argsort(perm);
    Wf = Wf.index_select(1, perm);
    Hf = Hf.index_select(0, perm).index_select(1, perm);
    torch::Tensor perm_cpu = perm.to(torch::kCPU).contiguous();
    perm_host.assign(perm_cpu.data_ptr<int64_t>(), perm_cpu.data_ptr<int64_t>() + cols);
  }

  const double mean_diag = Hf.diagonal().mean().item<double>();
  torch::Tensor U;
  double damp = opts.damp;
  for (int attempt = 0; attempt <= opts.max_damp_retries; ++attempt, damp *= 10) {
    U = inverse_cholesky_upper(Hf, damp * mean_diag);
    if (U.defined()) break;
    if (attempt < opts.max_damp_retries)
      log_warn(detail::concat("gptq: Cholesky of the damped Hessian failed with damp ", damp, "; retrying with ",
                              damp * 10));
  }
  FQ_CHECK(U.defined(), NumericError, "gptq_quantize: Cholesky of the Hessian failed up to damp ", damp / 10,
           " -> allowed a positive-definite H + damp·I; hint: raise gptq.damp or use more calibration data");

  // Per-column grid in processing order: scale/zero point vectors [rows] (or [1] per tensor).
  torch::Tensor scale_all = qp.scale.clone(), zero_all = qp.zero_point.clone();  // [*, G, 1]
  if (per_group && !static_groups) {
    scale_all = torch::empty({rows, G, 1}, Wf.options());
    zero_all = torch::empty({rows, G, 1}, Wf.options());
  }
  WeightQuantSpec col_spec = spec;
  col_spec.granularity = Granularity::PerChannel;
  torch::Tensor s_cur = qp.scale.reshape({-1}), z_cur = qp.zero_point.reshape({-1});

  torch::Tensor Qint = torch::zeros({rows, cols}, Wf.options());  // levels (integers: code - zero_point), processing order
  torch::Tensor loss = torch::zeros({}, Wf.options().dtype(torch::kDouble));
  const int64_t B = opts.block_size;
  using torch::indexing::Slice;

  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t i2 = std::min(i1 + B, cols), count = i2 - i1;
    torch::Tensor W1 = Wf.index({Slice(), Slice(i1, i2)}).clone();
    torch::Tensor Err1 = torch::zeros({rows, count}, Wf.options());
    torch::Tensor U1 = U.index({Slice(i1, i2), Slice(i1, i2)});
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = i1 + i;  // processing position
      const int64_t orig = opts.act_order ? perm_host[j] : j;
      if (static_groups) {
        s_cur = scale_all.index({Slice(), orig / g, 0});
        z_cur = zero_all.index({Slice(), orig / g, 0});
      } else if (per_group && j % g == 0) {
        // The group's CURRENT columns (methods.md §7.2): in-block ones from W1, later ones from Wf minus the
        // updates this block has not flushed yet. (The reference reads stale in-block values when g < B.)
        const int64_t end = std::min(j + g, cols);
        torch::Tensor cur = torch::zeros({rows, g}, Wf.options());
        const int64_t in_end = std::min(end, i2);
        cur.index_put_({Slice(), Slice(0, in_end - j)}, W1.index({Slice(), Slice(i, in_end - i1)}));
        if (end > i2) {
          torch::Tensor later = Wf.index({Slice(), Slice(i2, end)});
          if (i > 0)
            later = later - Err1.index({Slice(), Slice(0, i)}).matmul(U.index({Slice(i1, j), Slice(i2, end)}));
          cur.index_put_({Slice(), Slice(i2 - j, end - j)}, later);
        }
        QParams gq = init_qparams(cur, col_spec);  // zero padding as in to_grouped: 0 is always on the grid
        s_cur = gq.scale.reshape({-1});
        z_cur = gq.zero_point.reshape({-1});
        scale_all.index_put_({Slice(), j / g, 0}, s_cur);
        zero_all.index_put_({Slice(), j / g, 0}, z_cur);
      }
      torch::Tensor w = W1.index({Slice(), i});
      torch::Tensor q = WeightLevels(spec.format, z_cur).nearest(w / s_cur);
      torch::Tensor deq = s_cur * q;
      Qint.index_put_({Slice(), j}, q);
      torch::Tensor d = U1.index({i, i});
      torch::Tensor err = (w - deq) / d;
      loss += err.to(torch::kDouble).square().sum();
      W1.index({Slice(), Slice(i, count)}).sub_(err.unsqueeze(1) * U1.index({i, Slice(i, count)}).unsqueeze(0));
      Err1.index_put_({Slice(), i}, err);
    }
    if (i2 < cols)
      Wf.index({Slice(), Slice(i2, cols)}).sub_(Err1.matmul(U.index({Slice(i1, i2), Slice(i2, cols)})));
  }

  if (opts.act_order) Qint = Qint.index_select(1, invperm);
  // Exact codes in the grouped view; the zero padding is level 0 (integers: code = zero_point).
  QuantizedTensor out;
  out.qparams.scale = scale_all;
  out.qparams.zero_point = zero_all;
  out.codes = grouped_levels(spec, out.qparams).to_codes(to_grouped(Qint, spec));
  out.shape = W.sizes().vec();
  out.spec = spec;

  if (stats) {
    stats->damp_used = damp;
    stats->dead_columns = n_dead;
    stats->proxy_loss = loss.item<double>();
  }
  return out;
}

double hessian_weighted_error(const torch::Tensor& W, const torch::Tensor& W_hat, const torch::Tensor& H) {
  torch::NoGradGuard no_grad;
  FQ_CHECK(W.sizes() == W_hat.sizes(), ConfigError, "hessian_weighted_error: shapes differ -> ", W.sizes(), " vs ",
           W_hat.sizes());
  const int64_t rows = W.size(0), cols = W.numel() / rows;
  FQ_CHECK(H.dim() == 2 && H.size(0) == cols && H.size(1) == cols, ConfigError,
           "hessian_weighted_error: Hessian shape ", H.sizes(), " -> expected [", cols, ", ", cols, "]");
  torch::Tensor D = (W.to(torch::kDouble) - W_hat.to(W.device(), torch::kDouble)).reshape({rows, cols});
  return (D.matmul(H.to(W.device(), torch::kDouble)) * D).sum().item<double>();
}

}  // namespace flexquant
