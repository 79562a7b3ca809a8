// CNN ModelAdapters built from safetensors: CIFAR ResNet (He et al. 2016, §4.2, option-A shortcut as in
// akamaster/pytorch_resnet_cifar10), torchvision ResNet-18..152 (v1.5: stride on the 3x3 conv of the
// Bottleneck) and torchvision MobileNetV2 (Sandler et al. 2018, Table 2), with BatchNorm folded into each
// conv before quantization (QDrop/BRECQ practice, methods.md §3.2 and §10.11). Activation sites follow
// QDrop: after every ReLU/ReLU6 inside a unit, at every block output, and at the last layer's input.
// Invariant: forward() of every unit calls ctx.run(layers_[i], i, .) for each layer in layers_ order and
// ctx.act(sites_[j], j, .) for each site in sites_ order, exactly once per call.
#include "flexquant/cnn.h"

#include <torch/nn/functional/padding.h>
#include <torch/nn/functional/pooling.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace {

constexpr double kBnEps = 1e-5;

using Specs = std::vector<TensorSpec>;

void add_bn_specs(Specs& specs, const std::string& bn, int64_t channels) {
  for (const char* p : {".weight", ".bias", ".running_mean", ".running_var"}) specs.push_back({bn + p, {channels}});
}

void add_conv_bn_specs(Specs& specs, const std::string& conv, const std::string& bn, int64_t out, int64_t in_per_group,
                       int64_t k) {
  specs.push_back({conv + ".weight", {out, in_per_group, k, k}});
  add_bn_specs(specs, bn, out);
}

// A conv layer named `conv` with the BatchNorm `bn` folded in.
QuantLayer conv_bn_layer(const SafeTensorsFile& f, const std::string& conv, const std::string& bn, int64_t stride,
                         int64_t padding, int64_t groups = 1) {
  const torch::Tensor& var = f.at(bn + ".running_var");
  FQ_CHECK((var + kBnEps > 0).all().item<bool>(), NumericError, "tensor \"", bn, ".running_var\" in ", f.path,
           " has values <= -eps -> min ", var.min().item<double>(), " -> variances must be >= 0");
  FoldedConv fc = fold_batchnorm(f.at(conv + ".weight"), torch::Tensor(), f.at(bn + ".weight"), f.at(bn + ".bias"),
                                 f.at(bn + ".running_mean"), var, kBnEps);
  QuantLayer l;
  l.name = conv;
  l.kind = LayerKind::Conv2d;
  l.weight = fc.weight;
  l.bias = fc.bias;
  l.bn = fc.bn;
  l.stride = stride;
  l.padding = padding;
  l.groups = groups;
  return l;
}

QuantLayer linear_layer(const SafeTensorsFile& f, const std::string& name) {
  QuantLayer l;
  l.name = name;
  l.kind = LayerKind::Linear;
  l.weight = f.at(name + ".weight").to(torch::kFloat32).contiguous();
  l.bias = f.at(name + ".bias").to(torch::kFloat32).contiguous();
  return l;
}

bool has(const SafeTensorsFile& f, const std::string& name) { return f.contains(name); }

enum class Act { Relu, Relu6 };

torch::Tensor activate(const torch::Tensor& x, Act a) { return a == Act::Relu ? torch::relu(x) : torch::clamp(x, 0, 6); }

// ---------------------------------------------------------------------------------------------------
// Units

class CnnUnit : public Unit {
 public:
  explicit CnnUnit(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  std::vector<QuantLayer>& layers() override { return layers_; }
  const std::vector<ActSite>& act_sites() const override { return sites_; }
  /// Layer pairs inside the unit joined by a ReLU(6) only (cross-layer equalization); none by default.
  virtual std::vector<EqualizationPair> equalization_pairs() { return {}; }
  virtual void to(torch::Device device) {
    for (QuantLayer& l : layers_) l.to(device);
  }

 protected:
  EqualizationPair pair(int producer, int consumer, torch::Tensor* clip = nullptr) {
    QuantLayer& p = layers_[producer];
    QuantLayer& c = layers_[consumer];
    return {p.name + ">" + c.name, &p, &c, clip};
  }
  void add_site(const std::string& suffix, bool non_negative) { sites_.push_back({name_ + "." + suffix, non_negative}); }
  std::string name_;
  std::vector<QuantLayer> layers_;
  std::vector<ActSite> sites_;
};

// conv+BN+act, site on the activation output, then an optional 3x3/2 max-pool (torchvision ResNet stem).
// The site sits before the max-pool as in QDrop; max-pool commutes with a monotone quantizer anyway.
class ConvActUnit : public CnnUnit {
 public:
  ConvActUnit(const std::string& name, QuantLayer conv, Act act, bool maxpool)
      : CnnUnit(name), act_(act), maxpool_(maxpool) {
    layers_.push_back(std::move(conv));
    add_site("out", true);
  }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    torch::Tensor y = ctx.act(sites_[0], 0, activate(ctx.run(layers_[0], 0, x), act_));
    if (maxpool_) y = torch::max_pool2d(y, {3, 3}, {2, 2}, {1, 1});
    return y;
  }

 private:
  Act act_;
  bool maxpool_;
};

// CIFAR BasicBlock with the parameter-free option-A shortcut: x[:, :, ::2, ::2] zero-padded with
// planes/4 channels on each side.
class CifarBasicBlock : public CnnUnit {
 public:
  CifarBasicBlock(const std::string& name, QuantLayer c1, QuantLayer c2, bool option_a, int64_t pad)
      : CnnUnit(name), option_a_(option_a), pad_(pad) {
    layers_.push_back(std::move(c1));
    layers_.push_back(std::move(c2));
    add_site("act1", true);
    add_site("out", true);
  }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    torch::Tensor h = ctx.act(sites_[0], 0, torch::relu(ctx.run(layers_[0], 0, x)));
    h = ctx.run(layers_[1], 1, h);
    torch::Tensor sc = x;
    if (option_a_) {
      sc = x.slice(2, 0, x.size(2), 2).slice(3, 0, x.size(3), 2);
      sc = torch::constant_pad_nd(sc, {0, 0, 0, 0, pad_, pad_}, 0);
    }
    return ctx.act(sites_[1], 1, torch::relu(h + sc));
  }
  std::vector<EqualizationPair> equalization_pairs() override { return {pair(0, 1)}; }

 private:
  bool option_a_;
  int64_t pad_;
};

// torchvision BasicBlock (expansion 1) or Bottleneck (expansion 4); `downsample.0` (1x1 conv+BN) is the
// block's last layer when present.
class TorchvisionBlock : public CnnUnit {
 public:
  TorchvisionBlock(const std::string& name, std::vector<QuantLayer> convs, bool downsample)
      : CnnUnit(name), n_main_(static_cast<int>(convs.size()) - (downsample ? 1 : 0)), downsample_(downsample) {
    layers_ = std::move(convs);
    for (int i = 0; i + 1 < n_main_; ++i) add_site("act" + std::to_string(i + 1), true);
    add_site("out", true);
  }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    torch::Tensor h = x;
    for (int i = 0; i < n_main_; ++i) {
      h = ctx.run(layers_[i], i, h);
      if (i + 1 < n_main_) h = ctx.act(sites_[i], i, torch::relu(h));
    }
    torch::Tensor identity = downsample_ ? ctx.run(layers_[n_main_], n_main_, x) : x;
    const int last = static_cast<int>(sites_.size()) - 1;
    return ctx.act(sites_[last], last, torch::relu(h + identity));
  }
  std::vector<EqualizationPair> equalization_pairs() override {
    std::vector<EqualizationPair> out;
    for (int i = 0; i + 1 < n_main_; ++i) out.push_back(pair(i, i + 1));
    return out;
  }

 private:
  int n_main_;
  bool downsample_;
};

// MobileNetV2 InvertedResidual: [1x1 expand+ReLU6] -> 3x3 depthwise+ReLU6 -> 1x1 linear projection
// (+ input when stride 1 and in == out). The output has no ReLU, so its site is signed.
class InvertedResidual : public CnnUnit {
 public:
  InvertedResidual(const std::string& name, std::vector<QuantLayer> convs, bool residual)
      : CnnUnit(name), residual_(residual) {
    layers_ = std::move(convs);
    for (size_t i = 0; i + 1 < layers_.size(); ++i) {
      add_site("act" + std::to_string(i + 1), true);
      clips_.push_back(torch::full({layers_[i].weight.size(0)}, 6.0f));
    }
    add_site("out", false);
  }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    torch::Tensor h = x;
    const int n = static_cast<int>(layers_.size());
    for (int i = 0; i < n; ++i) {
      h = ctx.run(layers_[i], i, h);
      if (i + 1 < n) h = ctx.act(sites_[i], i, relu6(h, clips_[i]));
    }
    if (residual_) h = h + x;
    return ctx.act(sites_[n - 1], n - 1, h);
  }
  std::vector<EqualizationPair> equalization_pairs() override {
    std::vector<EqualizationPair> out;
    for (size_t i = 0; i + 1 < layers_.size(); ++i) out.push_back(pair(int(i), int(i) + 1, &clips_[i]));
    return out;
  }
  void to(torch::Device device) override {
    CnnUnit::to(device);
    for (auto& c : clips_) c = c.to(device);
  }

 private:
  // ReLU6 with a per-channel ceiling: 6 until cross-layer equalization rescales a channel by 1/s (ceiling 6/s),
  // which keeps the unit's function. min and max are exact, so at 6 this equals clamp(h, 0, 6) bit for bit.
  static torch::Tensor relu6(const torch::Tensor& h, const torch::Tensor& clip) {
    return torch::minimum(torch::relu(h), clip.view({1, -1, 1, 1}));
  }
  bool residual_;
  std::vector<torch::Tensor> clips_;  // [C] ceiling of each ReLU6, one per layer but the last
};

// Global average pool + flatten + Linear. The site is the Linear's input (SiteRole::ClassifierInput: kept at
// weight.first_last_bits like the Linear); the logits leave unquantized. Dropout (MobileNetV2) is identity in eval.
class ClassifierUnit : public CnnUnit {
 public:
  ClassifierUnit(const std::string& name, QuantLayer fc) : CnnUnit(name) {
    fc.role = LayerRole::Output;
    layers_.push_back(std::move(fc));
    add_site("in", true);
    sites_.back().role = SiteRole::ClassifierInput;
  }
  torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) override {
    torch::Tensor pooled = x.dim() == 4 ? x.mean({2, 3}) : x;
    return ctx.run(layers_[0], 0, ctx.act(sites_[0], 0, pooled));
  }
};

// ---------------------------------------------------------------------------------------------------
// Adapter

class CnnAdapter : public ModelAdapter {
 public:
  explicit CnnAdapter(std::string arch) : arch_(std::move(arch)) {}
  std::string arch() const override { return arch_; }
  std::vector<Unit*> units() override {
    std::vector<Unit*> out;
    for (auto& u : units_) out.push_back(u.get());
    return out;
  }
  void to(torch::Device device) override {
    for (auto& u : units_) u->to(device);
  }
  std::vector<EqualizationPair> equalization_pairs() override {
    std::vector<EqualizationPair> out;
    for (auto& u : units_)
      for (EqualizationPair& p : u->equalization_pairs()) out.push_back(p);
    return out;
  }
  /// The first layer of the first unit is the stem (LayerRole::Input).
  void add(std::unique_ptr<CnnUnit> u) {
    if (units_.empty() && !u->layers().empty()) u->layers().front().role = LayerRole::Input;
    units_.push_back(std::move(u));
  }

 private:
  std::string arch_;
  std::vector<std::unique_ptr<CnnUnit>> units_;
};

// Number of consecutive blocks "<stage>.<i>" (i = 0, 1, ...) that have a "<stage>.<i>.<probe>" tensor.
int64_t count_blocks(const SafeTensorsFile& f, const std::string& stage, const std::string& probe) {
  int64_t n = 0;
  while (has(f, stage + "." + std::to_string(n) + "." + probe)) ++n;
  return n;
}

void validate(const SafeTensorsFile& f, const Specs& specs, const std::string& arch) {
  check_tensor_set(f, specs, arch, {"num_batches_tracked"});
  std::vector<std::string> names;
  for (const auto& s : specs) names.push_back(s.name);
  check_finite(f, names);
}

// ---- CIFAR ResNet (akamaster): conv1/bn1, layer{1,2,3}.{i}.{conv,bn}{1,2}, linear.
std::unique_ptr<ModelAdapter> build_resnet_cifar(const SafeTensorsFile& f) {
  const std::string arch = "resnet_cifar";
  const auto& c1 = f.at("conv1.weight");
  FQ_CHECK(c1.dim() == 4, ModelError, "tensor \"conv1.weight\" in ", f.path, " has ", c1.dim(),
           " dims -> expected a 4-d conv weight");
  const int64_t w0 = c1.size(0), cin = c1.size(1);
  const int64_t nblocks = count_blocks(f, "layer1", "conv1.weight");
  FQ_CHECK(nblocks >= 1, ModelError, "tensor \"layer1.0.conv1.weight\" missing in ", f.path, " for arch ", arch,
           " -> hint: is this a CIFAR ResNet (akamaster layout)?");
  for (int s = 2; s <= 3; ++s) {
    const int64_t n = count_blocks(f, "layer" + std::to_string(s), "conv1.weight");
    FQ_CHECK(n == nblocks, ModelError, "stage layer", s, " in ", f.path, " has ", n, " blocks -> layer1 has ", nblocks,
             " -> every stage of a CIFAR ResNet has the same block count (6n+2 layers)");
  }
  FQ_CHECK(w0 % 4 == 0, ModelError, "tensor \"conv1.weight\" in ", f.path, " has ", w0,
           " output channels -> option-A shortcuts need a multiple of 4");
  const int64_t num_classes = f.at("linear.weight").size(0);

  Specs specs;
  add_conv_bn_specs(specs, "conv1", "bn1", w0, cin, 3);
  int64_t in = w0;
  for (int s = 1; s <= 3; ++s) {
    const int64_t w = w0 << (s - 1);
    for (int64_t i = 0; i < nblocks; ++i) {
      const std::string b = "layer" + std::to_string(s) + "." + std::to_string(i);
      add_conv_bn_specs(specs, b + ".conv1", b + ".bn1", w, i == 0 ? in : w, 3);
      add_conv_bn_specs(specs, b + ".conv2", b + ".bn2", w, w, 3);
    }
    in = w;
  }
  specs.push_back({"linear.weight", {num_classes, in}});
  specs.push_back({"linear.bias", {num_classes}});
  validate(f, specs, arch);

  auto m = std::make_unique<CnnAdapter>(arch);
  m->add(std::make_unique<ConvActUnit>("conv1", conv_bn_layer(f, "conv1", "bn1", 1, 1), Act::Relu, false));
  in = w0;
  for (int s = 1; s <= 3; ++s) {
    const int64_t w = w0 << (s - 1);
    for (int64_t i = 0; i < nblocks; ++i) {
      const std::string b = "layer" + std::to_string(s) + "." + std::to_string(i);
      const int64_t stride = (s > 1 && i == 0) ? 2 : 1;
      const bool option_a = stride != 1 || (i == 0 ? in : w) != w;
      m->add(std::make_unique<CifarBasicBlock>(b, conv_bn_layer(f, b + ".conv1", b + ".bn1", stride, 1),
                                               conv_bn_layer(f, b + ".conv2", b + ".bn2", 1, 1), option_a, w / 4));
    }
    in = w;
  }
  m->add(std::make_unique<ClassifierUnit>("linear", linear_layer(f, "linear")));
  return m;
}

// ---- torchvision ResNet: conv1/bn1, layer{1..4}.{i}.{conv,bn}{1,2[,3]}, downsample.{0,1}, fc.
std::unique_ptr<ModelAdapter> build_torchvision_resnet(const SafeTensorsFile& f, const std::string& arch,
                                                       const std::vector<int64_t>& layout, bool bottleneck) {
  const auto& c1 = f.at("conv1.weight");
  FQ_CHECK(c1.dim() == 4, ModelError, "tensor \"conv1.weight\" in ", f.path, " has ", c1.dim(),
           " dims -> expected a 4-d conv weight");
  const int64_t w0 = c1.size(0), cin = c1.size(1);
  for (int s = 1; s <= 4; ++s) {
    const int64_t n = count_blocks(f, "layer" + std::to_string(s), "conv1.weight");
    FQ_CHECK(n == layout[s - 1], ModelError, "stage layer", s, " in ", f.path, " has ", n, " blocks -> arch ", arch,
             " has ", layout[s - 1], " -> hint: is this the right --arch for this file?");
  }
  const int64_t expansion = bottleneck ? 4 : 1;
  const int64_t num_classes = f.at("fc.weight").size(0);

  struct BlockCfg {
    std::string name;
    int64_t in, planes, stride;
    bool downsample;
  };
  std::vector<BlockCfg> blocks;
  Specs specs;
  add_conv_bn_specs(specs, "conv1", "bn1", w0, cin, 7);
  int64_t in = w0;
  for (int s = 1; s <= 4; ++s) {
    const int64_t planes = w0 << (s - 1);
    for (int64_t i = 0; i < layout[s - 1]; ++i) {
      BlockCfg b{"layer" + std::to_string(s) + "." + std::to_string(i), in, planes, (s > 1 && i == 0) ? 2 : 1, false};
      b.downsample = b.stride != 1 || in != planes * expansion;
      if (bottleneck) {
        add_conv_bn_specs(specs, b.name + ".conv1", b.name + ".bn1", planes, in, 1);
        add_conv_bn_specs(specs, b.name + ".conv2", b.name + ".bn2", planes, planes, 3);
        add_conv_bn_specs(specs, b.name + ".conv3", b.name + ".bn3", planes * 4, planes, 1);
      } else {
        add_conv_bn_specs(specs, b.name + ".conv1", b.name + ".bn1", planes, in, 3);
        add_conv_bn_specs(specs, b.name + ".conv2", b.name + ".bn2", planes, planes, 3);
      }
      if (b.downsample)
        add_conv_bn_specs(specs, b.name + ".downsample.0", b.name + ".downsample.1", planes * expansion, in, 1);
      in = planes * expansion;
      blocks.push_back(b);
    }
  }
  specs.push_back({"fc.weight", {num_classes, in}});
  specs.push_back({"fc.bias", {num_classes}});
  validate(f, specs, arch);

  auto m = std::make_unique<CnnAdapter>(arch);
  m->add(std::make_unique<ConvActUnit>("conv1", conv_bn_layer(f, "conv1", "bn1", 2, 3), Act::Relu, true));
  for (const auto& b : blocks) {
    std::vector<QuantLayer> convs;
    const std::string& n = b.name;
    if (bottleneck) {
      convs.push_back(conv_bn_layer(f, n + ".conv1", n + ".bn1", 1, 0));
      convs.push_back(conv_bn_layer(f, n + ".conv2", n + ".bn2", b.stride, 1));
      convs.push_back(conv_bn_layer(f, n + ".conv3", n + ".bn3", 1, 0));
    } else {
      convs.push_back(conv_bn_layer(f, n + ".conv1", n + ".bn1", b.stride, 1));
      convs.push_back(conv_bn_layer(f, n + ".conv2", n + ".bn2", 1, 1));
    }
    if (b.downsample) convs.push_back(conv_bn_layer(f, n + ".downsample.0", n + ".downsample.1", b.stride, 0));
    m->add(std::make_unique<TorchvisionBlock>(n, std::move(convs), b.downsample));
  }
  m->add(std::make_unique<ClassifierUnit>("fc", linear_layer(f, "fc")));
  return m;
}

// ---- torchvision MobileNetV2: features.0 (ConvBNReLU6), features.1..17 (InvertedResidual),
// features.18 (1x1 ConvBNReLU6), classifier.1 (Linear).
std::unique_ptr<ModelAdapter> build_mobilenet_v2(const SafeTensorsFile& f) {
  const std::string arch = "mobilenet_v2";
  // Strides of features.1..17 from the (t, c, n, s) table of Sandler et al. 2018, Table 2; weights do not
  // record strides.
  const std::vector<int64_t> strides = {1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1};
  const int64_t nblocks = static_cast<int64_t>(strides.size());
  const auto& c0 = f.at("features.0.0.weight");
  FQ_CHECK(c0.dim() == 4, ModelError, "tensor \"features.0.0.weight\" in ", f.path, " has ", c0.dim(),
           " dims -> expected a 4-d conv weight");
  const int64_t stem = c0.size(0), cin = c0.size(1);
  FQ_CHECK(!has(f, "features." + std::to_string(nblocks + 2) + ".0.weight"), ModelError, "unexpected tensor \"features.",
           nblocks + 2, ".0.weight\" in ", f.path, " -> torchvision mobilenet_v2 has features.0..18");

  struct BlockCfg {
    std::string name;
    int64_t in, hidden, out, stride;
    bool expand;
  };
  std::vector<BlockCfg> blocks;
  Specs specs;
  add_conv_bn_specs(specs, "features.0.0", "features.0.1", stem, cin, 3);
  int64_t in = stem;
  for (int64_t i = 1; i <= nblocks; ++i) {
    BlockCfg b{"features." + std::to_string(i), in, in, 0, strides[i - 1], false};
    const std::string c = b.name + ".conv";
    b.expand = has(f, c + ".3.weight");
    if (b.expand) {
      b.hidden = f.at(c + ".0.0.weight").size(0);
      b.out = f.at(c + ".2.weight").size(0);
      add_conv_bn_specs(specs, c + ".0.0", c + ".0.1", b.hidden, in, 1);
      add_conv_bn_specs(specs, c + ".1.0", c + ".1.1", b.hidden, 1, 3);
      add_conv_bn_specs(specs, c + ".2", c + ".3", b.out, b.hidden, 1);
    } else {
      b.out = f.at(c + ".1.weight").size(0);
      add_conv_bn_specs(specs, c + ".0.0", c + ".0.1", in, 1, 3);
      add_conv_bn_specs(specs, c + ".1", c + ".2", b.out, in, 1);
    }
    in = b.out;
    blocks.push_back(b);
  }
  const std::string last = "features." + std::to_string(nblocks + 1);
  const int64_t last_ch = f.at(last + ".0.weight").size(0);
  add_conv_bn_specs(specs, last + ".0", last + ".1", last_ch, in, 1);
  const int64_t num_classes = f.at("classifier.1.weight").size(0);
  specs.push_back({"classifier.1.weight", {num_classes, last_ch}});
  specs.push_back({"classifier.1.bias", {num_classes}});
  validate(f, specs, arch);

  auto m = std::make_unique<CnnAdapter>(arch);
  m->add(std::make_unique<ConvActUnit>("features.0", conv_bn_layer(f, "features.0.0", "features.0.1", 2, 1), Act::Relu6,
                                       false));
  for (const auto& b : blocks) {
    const std::string c = b.name + ".conv";
    std::vector<QuantLayer> convs;
    if (b.expand) {
      convs.push_back(conv_bn_layer(f, c + ".0.0", c + ".0.1", 1, 0));
      convs.push_back(conv_bn_layer(f, c + ".1.0", c + ".1.1", b.stride, 1, b.hidden));
      convs.push_back(conv_bn_layer(f, c + ".2", c + ".3", 1, 0));
    } else {
      convs.push_back(conv_bn_layer(f, c + ".0.0", c + ".0.1", b.stride, 1, b.in));
      convs.push_back(conv_bn_layer(f, c + ".1", c + ".2", 1, 0));
    }
    m->add(std::make_unique<InvertedResidual>(b.name, std::move(convs), b.stride == 1 && b.in == b.out));
  }
  m->add(std::make_unique<ConvActUnit>(last, conv_bn_layer(f, last + ".0", last + ".1", 1, 0), Act::Relu6, false));
  m->add(std::make_unique<ClassifierUnit>("classifier", linear_layer(f, "classifier.1")));
  return m;
}

}  // namespace

std::vector<std::string> image_classifier_archs() {
  return {"resnet_cifar", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"};
}

FoldedConv fold_batchnorm(const torch::Tensor& conv_weight, const torch::Tensor& conv_bias, const torch::Tensor& gamma,
                          const torch::Tensor& beta, const torch::Tensor& running_mean,
                          const torch::Tensor& running_var, double eps) {
  const int64_t out = conv_weight.size(0);
  FQ_INTERNAL_ASSERT(gamma.numel() == out && beta.numel() == out && running_mean.numel() == out &&
                     running_var.numel() == out);
  // float32, in the order of PyTorch's ONNX exporter (its Conv+BatchNormalization fusion), so that a model given as
  // safetensors and the same model exported to ONNX hold bit for bit the same folded weights.
  auto f = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
  const torch::Tensor scale = f(gamma).div(f(running_var).add(eps).sqrt());  // [out]
  std::vector<int64_t> bshape(conv_weight.dim(), 1);
  bshape[0] = out;
  FoldedConv r;
  r.weight = f(conv_weight).mul(scale.view(bshape)).contiguous();
  r.bias = (conv_bias.defined() ? f(conv_bias).sub(f(running_mean)).mul(scale).add(f(beta))
                                : f(beta).sub(f(running_mean).mul(scale))).contiguous();
  r.bn = {f(gamma).contiguous(), f(beta).contiguous(), f(running_mean).contiguous(), f(running_var).contiguous(), eps};
  return r;
}

std::unique_ptr<ModelAdapter> build_image_classifier(const SafeTensorsFile& weights, const std::string& arch) {
  if (arch == "resnet_cifar") return build_resnet_cifar(weights);
  if (arch == "resnet18") return build_torchvision_resnet(weights, arch, {2, 2, 2, 2}, false);
  if (arch == "resnet34") return build_torchvision_resnet(weights, arch, {3, 4, 6, 3}, false);
  if (arch == "resnet50") return build_torchvision_resnet(weights, arch, {3, 4, 6, 3}, true);
  if (arch == "resnet101") return build_torchvision_resnet(weights, arch, {3, 4, 23, 3}, true);
  if (arch == "resnet152") return build_torchvision_resnet(weights, arch, {3, 8, 36, 3}, true);
  if (arch == "mobilenet_v2") return build_mobilenet_v2(weights);
  std::string valid;
  for (const auto& a : image_classifier_archs()) valid += (valid.empty() ? "" : ", ") + a;
  throw ConfigError(detail::concat("unknown image-classifier arch \"", arch, "\" -> valid: ", valid,
                                   " -> hint: CIFAR-10 ResNet-20/32/44 files use resnet_cifar"));
}

std::unique_ptr<ModelAdapter> load_image_classifier(const std::string& safetensors_path, const std::string& arch) {
  // Check the arch before reading a possibly large file.
  const auto archs = image_classifier_archs();
  if (std::find(archs.begin(), archs.end(), arch) == archs.end()) return build_image_classifier(SafeTensorsFile{}, arch);
  Stopwatch sw;
  auto m = build_image_classifier(load_safetensors(safetensors_path), arch);
  log_debug(detail::concat("loaded ", arch, " from ", safetensors_path, " (", m->units().size(), " units, ",
                           m->all_layers().size(), " layers) in ", format_duration(sw.seconds())));
  return m;
}

EvalResult evaluate_classifier(ModelAdapter& model, const torch::Tensor& images, const torch::Tensor& labels,
                               UnitContext& ctx, int64_t batch, bool keep_logits) {
  FQ_CHECK(batch >= 1, ConfigError, "evaluation batch ", batch, " -> must be >= 1");
  FQ_CHECK(images.dim() == 4 && labels.dim() == 1 && images.size(0) == labels.size(0), ConfigError,
           "evaluation needs images [N, C, H, W] and labels [N] -> got ", images.sizes(), " and ", labels.sizes());
  torch::NoGradGuard no_grad;
  Stopwatch sw;
  auto layers = model.all_layers();
  FQ_INTERNAL_ASSERT(!layers.empty(), "model without layers");
  const torch::Device device = layers.front()->weight.device();
  EvalResult r;
  const int64_t n = images.size(0);
  std::vector<torch::Tensor> kept;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min(n, b + batch);
    torch::Tensor x = images.slice(0, b, e).to(device, torch::kFloat32);
    // oneDNN convolutions run about 1.7x faster on NHWC input here (measured on ResNet-20, 2 cores); the
    // memory format propagates through the convs and element-wise ops, the values are unchanged.
    if (x.dim() == 4) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor y = labels.slice(0, b, e).to(device);
    torch::Tensor logits = model.forward(x, ctx);
    r.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    if (keep_logits) kept.push_back(logits.to(torch::kCPU, torch::kFloat32).contiguous());
  }
  if (keep_logits && !kept.empty()) r.logits = torch::cat(kept);
  r.count = n;
  r.top1 = n ? 100.0 * static_cast<double>(r.correct) / static_cast<double>(n) : 0.0;
  r.seconds = sw.seconds();
  return r;
}

EvalResult evaluate_classifier(ModelAdapter& model, const torch::Tensor& images, const torch::Tensor& labels,
                               int64_t batch) {
  UnitContext fp;
  return evaluate_classifier(model, images, labels, fp, batch);
}

}  // namespace flexquant
