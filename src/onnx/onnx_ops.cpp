// ONNX operators on LibTorch: one function per op, registered by name (the ONNX operator spec, opsets 11-17).
#include <torch/torch.h>

#include <functional>
#include <limits>

#include "flexquant/error.h"
#include "flexquant/onnx.h"
#include "onnx_internal.h"

namespace flexquant {
namespace {

using Ins = std::vector<torch::Tensor>;
using Outs = std::vector<torch::Tensor>;
using OpFn = std::function<Outs(const OnnxNode&, const Ins&, int64_t opset)>;

std::string where(const OnnxNode& n) { return n.op + " node \"" + n.name + "\""; }

const torch::Tensor& in(const OnnxNode& n, const Ins& x, size_t i) {
  FQ_CHECK(i < x.size() && x[i].defined(), ModelError, where(n), ": input ", i, " is missing");
  return x[i];
}
bool has(const Ins& x, size_t i) { return i < x.size() && x[i].defined(); }

std::vector<int64_t> ints_of(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kLong).contiguous().reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

int64_t norm_axis(int64_t a, int64_t rank, const OnnxNode& n) {
  FQ_CHECK(a >= -rank && a < rank, ModelError, where(n), ": axis ", a, " out of range for rank ", rank);
  return a < 0 ? a + rank : a;
}

// Conv (2-D; 1-D via a unit height): pads [begin..., end...], auto_pad, groups, strides, dilations.
Outs conv(const OnnxNode& n, const Ins& x, int64_t) {
  torch::Tensor X = in(n, x, 0), W = in(n, x, 1);
  FQ_CHECK(X.dim() == 4 || X.dim() == 3, ModelError, where(n), ": input rank ", X.dim(), " -> supported: 1-D and 2-D");
  const bool one_d = X.dim() == 3;
  if (one_d) X = X.unsqueeze(2), W = W.unsqueeze(2);
  const int64_t kh = W.size(2), kw = W.size(3);
  auto strides = n.attr_ints("strides", {1, 1});
  auto dil = n.attr_ints("dilations", {1, 1});
  auto pads = n.attr_ints("pads", {0, 0, 0, 0});
  if (one_d) {
    strides = {1, strides.at(0)};
    dil = {1, dil.at(0)};
    pads = {0, pads.at(0), 0, pads.size() > 1 ? pads.at(1) : 0};
  }
  const std::string ap = n.attr_s("auto_pad", "NOTSET");
  if (ap == "SAME_UPPER" || ap == "SAME_LOWER") {
    const int64_t k[2] = {kh, kw};
    for (int d = 0; d < 2; ++d) {
      const int64_t size = X.size(2 + d), out = (size + strides[d] - 1) / strides[d];
      const int64_t total = std::max<int64_t>(0, (out - 1) * strides[d] + (k[d] - 1) * dil[d] + 1 - size);
      const int64_t small = total / 2, big = total - small;
      pads[d] = ap == "SAME_UPPER" ? small : big;
      pads[d + 2] = ap == "SAME_UPPER" ? big : small;
    }
  } else if (ap == "VALID") {
    pads = {0, 0, 0, 0};
  }
  if (pads[0] != pads[2] || pads[1] != pads[3]) {
    X = torch::constant_pad_nd(X, {pads[1], pads[3], pads[0], pads[2]}, 0);
    pads = {0, 0, 0, 0};
  }
  torch::Tensor B = has(x, 2) ? x[2] : torch::Tensor();
  torch::Tensor y = torch::conv2d(X, W, B, {strides[0], strides[1]}, {pads[0], pads[1]}, {dil[0], dil[1]},
                                  n.attr_i("group", 1));
  return {one_d ? y.squeeze(2) : y};
}

Outs gemm(const OnnxNode& n, const Ins& x, int64_t) {
  torch::Tensor A = in(n, x, 0), B = in(n, x, 1);
  if (n.attr_i("transA", 0)) A = A.t();
  if (n.attr_i("transB", 0)) B = B.t();
  torch::Tensor y = torch::matmul(A, B) * n.attr_f("alpha", 1.0f);
  if (has(x, 2)) y = y + x[2] * n.attr_f("beta", 1.0f);
  return {y};
}

// MaxPool / AveragePool (2-D): the input is padded explicitly (-inf / 0), so any pads and auto_pad work; averages
// divide by the count of real (or, with count_include_pad, real and padded) elements in each window.
Outs pool(const OnnxNode& n, const Ins& x, int64_t, bool max) {
  const torch::Tensor& X = in(n, x, 0);
  FQ_CHECK(X.dim() == 4, ModelError, where(n), ": input rank ", X.dim(), " -> supported: 2-D pooling (NCHW)");
  auto k = n.attr_ints("kernel_shape");
  FQ_CHECK(k.size() == 2, ModelError, where(n), ": kernel_shape must have 2 values");
  auto s = n.attr_ints("strides", {1, 1});
  auto d = n.attr_ints("dilations", {1, 1});
  auto p = onnx_window_pads(n, X, k, s, d);
  const bool ceil = n.attr_i("ceil_mode", 0) != 0;
  const std::vector<int64_t> tp = {p[1], p[3], p[0], p[2]};
  if (max) {
    FQ_CHECK(n.outputs.size() == 1, ModelError, where(n), ": the Indices output is not supported");
    const torch::Tensor Xf = X.is_floating_point() ? X : X.to(torch::kDouble);  // exact for 8/16/32-bit integers
    torch::Tensor Xp = torch::constant_pad_nd(Xf, tp, -std::numeric_limits<double>::infinity());
    return {torch::max_pool2d(Xp, k, s, {0, 0}, d, ceil).to(X.scalar_type())};
  }
  FQ_CHECK(d[0] == 1 && d[1] == 1, ModelError, where(n), ": dilated average pooling is not supported");
  torch::Tensor sum = torch::avg_pool2d(torch::constant_pad_nd(X, tp, 0), k, s, {0, 0}, ceil, true, 1);
  torch::Tensor ones = torch::ones({1, 1, X.size(2), X.size(3)}, X.options());
  torch::Tensor mask = torch::constant_pad_nd(ones, tp, n.attr_i("count_include_pad", 0) ? 1.0 : 0.0);
  torch::Tensor count = torch::avg_pool2d(mask, k, s, {0, 0}, ceil, true, 1);
  return {sum / count};
}

Outs batchnorm(const OnnxNode& n, const Ins& x, int64_t) {
  FQ_CHECK(n.attr_i("training_mode", 0) == 0, ModelError, where(n), ": training_mode=1 is not supported (inference only)");
  return {torch::batch_norm(in(n, x, 0), in(n, x, 1), in(n, x, 2), in(n, x, 3), in(n, x, 4), false, 0.0,
                            n.attr_f("epsilon", 1e-5f), false)};
}

// Pad (opset >= 11): pads input [begins..., ends...], optional constant_value, mode constant | reflect | edge.
Outs pad(const OnnxNode& n, const Ins& x, int64_t opset) {
  const torch::Tensor& X = in(n, x, 0);
  auto p = opset < 11 ? n.attr_ints("pads") : ints_of(in(n, x, 1));
  const int64_t r = X.dim();
  FQ_CHECK(static_cast<int64_t>(p.size()) == 2 * r, ModelError, where(n), ": pads has ", p.size(), " values for rank ", r);
  std::vector<int64_t> tp;  // torch: last dim first, (begin, end) pairs
  for (int64_t d = r - 1; d >= 0; --d) tp.push_back(p[d]), tp.push_back(p[d + r]);
  const std::string mode = n.attr_s("mode", "constant");
  if (mode == "constant") {
    const double v = opset < 11 ? n.attr_f("value", 0.f) : has(x, 2) ? x[2].item<double>() : 0.0;
    return {torch::constant_pad_nd(X, tp, v)};
  }
  FQ_CHECK(mode == "reflect" || mode == "edge", ModelError, where(n), ": mode \"", mode, "\" -> supported: constant, reflect, edge");
  // reflect / edge pad only the trailing spatial dims in torch; ONNX models pad H, W of NCHW.
  while (tp.size() > 4 && tp[tp.size() - 1] == 0 && tp[tp.size() - 2] == 0) tp.resize(tp.size() - 2);
  const torch::Tensor Xf = X.is_floating_point() ? X : X.to(torch::kDouble);  // torch pads floats only
  return {torch::pad(Xf, tp, mode == "reflect" ? "reflect" : "replicate").to(X.scalar_type())};
}

// Slice (opset >= 10): starts, ends, axes, steps as inputs; clamped like the spec, negative steps included.
Outs slice(const OnnxNode& n, const Ins& x, int64_t opset) {
  torch::Tensor X = in(n, x, 0);
  const bool legacy = opset < 10;
  auto starts = legacy ? n.attr_ints("starts") : ints_of(in(n, x, 1));
  auto ends = legacy ? n.attr_ints("ends") : ints_of(in(n, x, 2));
  std::vector<int64_t> axes, steps;
  if (legacy) axes = n.attr_ints("axes");
  else if (has(x, 3)) axes = ints_of(x[3]);
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (!legacy && has(x, 4)) steps = ints_of(x[4]);
  else steps.assign(starts.size(), 1);
  for (size_t i = 0; i < starts.size(); ++i) {
    const int64_t ax = norm_axis(axes[i], X.dim(), n), size = X.size(ax), st = steps[i];
    FQ_CHECK(st != 0, ModelError, where(n), ": step 0");
    auto clampi = [&](int64_t v, int64_t lo, int64_t hi) { return std::max(lo, std::min(hi, v)); };
    int64_t b = starts[i] < 0 ? starts[i] + size : starts[i];
    int64_t e = ends[i] < 0 ? ends[i] + size : ends[i];
    if (st > 0) {
      b = clampi(b, 0, size), e = clampi(e, 0, size);
      X = X.slice(ax, b, std::max(b, e), st);
    } else {
      b = clampi(b, -1, size - 1), e = clampi(e, -1, size - 1);
      std::vector<int64_t> idx;
      for (int64_t k = b; k > e; k += st) idx.push_back(k);
      X = X.index_select(ax, torch::tensor(idx, torch::kLong).to(X.device()));
    }
  }
  return {X};
}

Outs reshape(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  auto shape = ints_of(in(n, x, 1));
  const bool allowzero = n.attr_i("allowzero", 0) != 0;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 0 && !allowzero) shape[i] = X.size(static_cast<int64_t>(i));
  return {X.reshape(shape)};
}

Outs flatten(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  const int64_t a = n.attr_i("axis", 1) < 0 ? n.attr_i("axis", 1) + X.dim() : n.attr_i("axis", 1);
  int64_t outer = 1;
  for (int64_t d = 0; d < a; ++d) outer *= X.size(d);
  return {X.reshape({outer, -1})};
}

Outs transpose(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  std::vector<int64_t> perm = n.attr_ints("perm");
  if (perm.empty())
    for (int64_t d = X.dim() - 1; d >= 0; --d) perm.push_back(d);
  return {X.permute(perm)};
}

Outs concat(const OnnxNode& n, const Ins& x, int64_t) {
  std::vector<torch::Tensor> parts;
  for (const auto& t : x)
    if (t.defined()) parts.push_back(t);
  FQ_CHECK(!parts.empty(), ModelError, where(n), ": no inputs");
  return {torch::cat(parts, norm_axis(n.attr_i("axis", 0), parts[0].dim(), n))};
}

// Squeeze / Unsqueeze: axes from the attribute (opset < 13) or the second input (opset >= 13).
std::vector<int64_t> axes_of(const OnnxNode& n, const Ins& x) {
  return has(x, 1) ? ints_of(x[1]) : n.attr_ints("axes");
}

Outs squeeze(const OnnxNode& n, const Ins& x, int64_t) {
  torch::Tensor X = in(n, x, 0);
  auto axes = axes_of(n, x);
  if (axes.empty()) return {X.squeeze()};
  for (auto& a : axes) a = norm_axis(a, X.dim(), n);
  std::sort(axes.rbegin(), axes.rend());
  for (int64_t a : axes) X = X.squeeze(a);
  return {X};
}

Outs unsqueeze(const OnnxNode& n, const Ins& x, int64_t) {
  torch::Tensor X = in(n, x, 0);
  auto axes = axes_of(n, x);
  const int64_t r = X.dim() + static_cast<int64_t>(axes.size());
  for (auto& a : axes) a = norm_axis(a, r, n);
  std::sort(axes.begin(), axes.end());
  for (int64_t a : axes) X = X.unsqueeze(a);
  return {X};
}

Outs gather(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  const int64_t ax = norm_axis(n.attr_i("axis", 0), X.dim(), n);
  torch::Tensor idx = in(n, x, 1).to(torch::kLong);
  idx = torch::where(idx < 0, idx + X.size(ax), idx);
  torch::Tensor flat = X.index_select(ax, idx.reshape({-1}));
  std::vector<int64_t> shape(X.sizes().begin(), X.sizes().begin() + ax);
  for (int64_t d : idx.sizes()) shape.push_back(d);
  for (int64_t d = ax + 1; d < X.dim(); ++d) shape.push_back(X.size(d));
  return {flat.reshape(shape)};
}

Outs constant_of_shape(const OnnxNode& n, const Ins& x, int64_t) {
  auto shape = ints_of(in(n, x, 0));
  auto it = n.attrs.find("value");
  torch::Tensor v = it != n.attrs.end() ? it->second.t : torch::zeros({1});
  return {torch::full(shape, v.reshape({-1})[0].item(), v.options())};
}

Outs reduce_mean(const OnnxNode& n, const Ins& x, int64_t opset) {
  const torch::Tensor& X = in(n, x, 0);
  auto axes = opset >= 18 && has(x, 1) ? ints_of(x[1]) : n.attr_ints("axes");
  const bool keep = n.attr_i("keepdims", 1) != 0;
  if (axes.empty())
    for (int64_t d = 0; d < X.dim(); ++d) axes.push_back(d);
  for (auto& a : axes) a = norm_axis(a, X.dim(), n);
  return {X.mean(axes, keep)};
}

Outs softmax(const OnnxNode& n, const Ins& x, int64_t opset) {
  const torch::Tensor& X = in(n, x, 0);
  const int64_t ax = norm_axis(n.attr_i("axis", opset >= 13 ? -1 : 1), X.dim(), n);
  if (opset >= 13) return {torch::softmax(X, ax)};
  // Before opset 13: softmax over the flattened dims [axis, rank).
  return {torch::softmax(X.flatten(ax), ax).reshape(X.sizes())};
}

Outs clip(const OnnxNode& n, const Ins& x, int64_t opset) {
  torch::Tensor X = in(n, x, 0);
  if (opset >= 11) {
    if (has(x, 1)) X = torch::maximum(X, x[1].to(X.scalar_type()));
    if (has(x, 2)) X = torch::minimum(X, x[2].to(X.scalar_type()));
    return {X};
  }
  return {X.clamp(n.attr_f("min", -std::numeric_limits<float>::max()), n.attr_f("max", std::numeric_limits<float>::max()))};
}

// QuantizeLinear / DequantizeLinear: scale and zero point are scalars, or 1-D along `axis` (opset 13).
torch::Tensor along_axis(const torch::Tensor& p, const torch::Tensor& x, const OnnxNode& n) {
  if (p.dim() == 0) return p;
  int64_t axis = n.attr_i("axis", 1);
  if (axis < 0) axis += x.dim();
  FQ_CHECK(axis >= 0 && axis < x.dim() && p.dim() == 1 && p.numel() == x.size(axis), ModelError, where(n),
           ": scale/zero point of ", p.numel(), " values for axis ", axis, " of an input of shape ", x.sizes());
  std::vector<int64_t> shape(x.dim(), 1);
  shape[axis] = p.numel();
  return p.reshape(shape);
}

Outs quantize_linear(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  torch::Tensor zp = x.size() > 2 && x[2].defined() ? x[2] : torch::zeros({}, torch::kUInt8);
  FQ_CHECK(zp.scalar_type() == torch::kUInt8 || zp.scalar_type() == torch::kInt8, ModelError, where(n),
           ": zero point type ", zp.scalar_type(), " -> supported: uint8, int8");
  const bool u8 = zp.scalar_type() == torch::kUInt8;
  auto q = torch::round(X.to(torch::kFloat) / along_axis(in(n, x, 1), X, n)) + along_axis(zp, X, n).to(torch::kFloat);
  return Outs{q.clamp(u8 ? 0 : -128, u8 ? 255 : 127).to(zp.scalar_type())};
}

Outs dequantize_linear(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor& X = in(n, x, 0);
  torch::Tensor v = X.to(torch::kFloat);
  if (x.size() > 2 && x[2].defined()) v = v - along_axis(x[2], X, n).to(torch::kFloat);
  return Outs{v * along_axis(in(n, x, 1), X, n)};
}

Outs range(const OnnxNode& n, const Ins& x, int64_t) {
  const torch::Tensor &s = in(n, x, 0), &l = in(n, x, 1), &d = in(n, x, 2);
  return {torch::arange(s.item(), l.item(), d.item(), s.options())};
}

const std::map<std::string, OpFn>& registry() {
  using namespace std::placeholders;
  static const std::map<std::string, OpFn> ops = {
      {"Conv", conv},
      {"Gemm", gemm},
      {"MatMul", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{torch::matmul(in(n, x, 0), in(n, x, 1))}; }},
      {"BatchNormalization", batchnorm},
      {"Relu", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{torch::relu(in(n, x, 0))}; }},
      {"LeakyRelu", [](const OnnxNode& n, const Ins& x, int64_t) {
         return Outs{torch::leaky_relu(in(n, x, 0), n.attr_f("alpha", 0.01f))}; }},
      {"Sigmoid", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{torch::sigmoid(in(n, x, 0))}; }},
      {"HardSigmoid", [](const OnnxNode& n, const Ins& x, int64_t) {
         return Outs{(in(n, x, 0) * n.attr_f("alpha", 0.2f) + n.attr_f("beta", 0.5f)).clamp(0, 1)}; }},
      {"HardSwish", [](const OnnxNode& n, const Ins& x, int64_t) {
         const auto& X = in(n, x, 0);
         return Outs{X * (X / 6.0f + 0.5f).clamp(0, 1)}; }},
      {"Clip", clip},
      {"Add", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{in(n, x, 0) + in(n, x, 1)}; }},
      {"Sub", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{in(n, x, 0) - in(n, x, 1)}; }},
      {"Mul", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{in(n, x, 0) * in(n, x, 1)}; }},
      {"Div", [](const OnnxNode& n, const Ins& x, int64_t) {
         const auto &a = in(n, x, 0), &b = in(n, x, 1);
         if (a.is_floating_point()) return Outs{a / b};
         return Outs{torch::div(a, b, "trunc")}; }},
      {"Concat", concat},
      {"Flatten", flatten},
      {"Reshape", reshape},
      {"Transpose", transpose},
      {"Squeeze", squeeze},
      {"Unsqueeze", unsqueeze},
      {"Pad", pad},
      {"Slice", slice},
      {"MaxPool", std::bind(pool, _1, _2, _3, true)},
      {"AveragePool", std::bind(pool, _1, _2, _3, false)},
      {"GlobalAveragePool", [](const OnnxNode& n, const Ins& x, int64_t) {
         const auto& X = in(n, x, 0);
         std::vector<int64_t> dims;
         for (int64_t d = 2; d < X.dim(); ++d) dims.push_back(d);
         return Outs{X.mean(dims, true)}; }},
      {"ReduceMean", reduce_mean},
      {"Softmax", softmax},
      {"Identity", [](const OnnxNode& n, const Ins& x, int64_t) { return Outs{in(n, x, 0)}; }},
      {"Constant", [](const OnnxNode& n, const Ins&, int64_t) -> Outs {
         throw ModelError(where(n) + ": Constant nodes are folded at load"); }},
      {"Shape", [](const OnnxNode& n, const Ins& x, int64_t) {
         auto s = in(n, x, 0).sizes().vec();
         const int64_t r = static_cast<int64_t>(s.size());
         int64_t b = n.attr_i("start", 0), e = n.attr_i("end", r);
         b = std::clamp<int64_t>(b < 0 ? b + r : b, 0, r), e = std::clamp<int64_t>(e < 0 ? e + r : e, 0, r);
         return Outs{torch::tensor(std::vector<int64_t>(s.begin() + b, s.begin() + std::max(b, e)), torch::kLong)}; }},
      {"Gather", gather},
      {"ConstantOfShape", constant_of_shape},
      {"Cast", [](const OnnxNode& n, const Ins& x, int64_t) {
         return Outs{in(n, x, 0).to(onnx_dtype(static_cast<int32_t>(n.attr_i("to", 1)), where(n)))}; }},
      {"Range", range},
      {"QuantizeLinear", quantize_linear},
      {"DequantizeLinear", dequantize_linear},
  };
  return ops;
}

}  // namespace

// Explicit [begin_h, begin_w, end_h, end_w] pads of a 2-D window op, from pads or auto_pad (SAME_UPPER puts the
// extra pad at the end, SAME_LOWER at the begin).
std::vector<int64_t> onnx_window_pads(const OnnxNode& n, const torch::Tensor& X, const std::vector<int64_t>& k,
                                 const std::vector<int64_t>& s, const std::vector<int64_t>& d) {
  const std::string ap = n.attr_s("auto_pad", "NOTSET");
  if (ap == "VALID") return {0, 0, 0, 0};
  if (ap != "SAME_UPPER" && ap != "SAME_LOWER") return n.attr_ints("pads", {0, 0, 0, 0});
  std::vector<int64_t> p(4);
  for (int i = 0; i < 2; ++i) {
    const int64_t size = X.size(2 + i), out = (size + s[i] - 1) / s[i];
    const int64_t total = std::max<int64_t>(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size);
    p[i] = ap == "SAME_UPPER" ? total / 2 : total - total / 2;
    p[i + 2] = total - p[i];
  }
  return p;
}

std::vector<std::string> onnx_supported_ops() {
  std::vector<std::string> out;
  for (const auto& [k, v] : registry()) out.push_back(k);
  return out;
}

std::vector<torch::Tensor> onnx_run_node(const OnnxNode& node, const std::vector<torch::Tensor>& inputs, int64_t opset) {
  auto it = registry().find(node.op);
  FQ_CHECK(it != registry().end(), ModelError, "op ", node.op, " (node \"", node.name, "\") is not supported");
  try {
    return it->second(node, inputs, opset);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelError(where(node) + " failed: " + e.what());
  }
}

}  // namespace flexquant
