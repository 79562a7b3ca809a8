// ModelAdapter: a model seen as an ordered list of reconstruction units (blocks), each owning the
// quantizable layers it runs. The quantization engine never knows the architecture: it asks a unit to
// run forward through a UnitContext, which decides which weight each layer uses (FP, fake-quantized,
// frozen codes) and what happens at each activation-quantization site.
//
//   logits = adapter.epilogue( unit[n-1]( ... unit[0]( adapter.prologue(input) ) ) )
#pragma once
#include <torch/types.h>

#include "flexquant/error.h"

#include <memory>
#include <string>
#include <vector>

namespace flexquant {

enum class LayerKind { Linear, Conv2d };

/// What a layer is to its model, for the default bit policy: the engine keeps Input (a CNN's stem) and Output (a
/// classifier) layers at the recipe's weight.first_last_bits without knowing the architecture.
enum class LayerRole { Hidden, Input, Output };

/// What an activation site is to its model: KvCache sites (an LM's keys and values) take act.kv_bits per token;
/// ClassifierInput sites (the input of an Output layer) stay at weight.first_last_bits like their layer.
enum class SiteRole { Activation, KvCache, ClassifierInput };

/// The BatchNorm an adapter folded into a layer's weight and bias (eval mode, y = gamma (z - mean) /
/// sqrt(var + eps) + beta on the conv's output z), kept for methods that need the unfolded statistics
/// (PD-Quant's distribution correction). Tensors are [out] float32, undefined where no BatchNorm was folded.
struct FoldedBatchNorm {
  torch::Tensor gamma, beta, mean, var;
  double eps = 1e-5;
  bool defined() const { return gamma.defined(); }
  /// The BatchNorm's input z recovered from the folded layer's output y ([N, out, ...]); a channel whose gamma is 0
  /// (its output carries nothing of z) gets its running mean.
  torch::Tensor input_from_output(const torch::Tensor& y) const;
};

/// One quantizable layer: y = op(x, W) + b. Weights are [out, in] (Linear) or [out, in/groups, kh, kw]
/// (Conv2d), fp32, with BatchNorm already folded in.
struct QuantLayer {
  std::string name;   ///< torchvision / HF style name, e.g. "layer1.0.conv1", "layers.0.attention.wq"
  LayerKind kind = LayerKind::Linear;
  torch::Tensor weight;
  torch::Tensor bias;  ///< undefined when the layer has none
  int64_t stride = 1, padding = 0, groups = 1, dilation = 1;  ///< Conv2d only (square; asymmetric pads come pre-applied)
  LayerRole role = LayerRole::Hidden;
  FoldedBatchNorm bn;  ///< what was folded in, if anything

  /// Apply this layer with the given weight (same shape as `weight`).
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& w) const;
  /// Move weight, bias and folded statistics to a device.
  void to(torch::Device device);
};

/// A point inside a unit where activations may be quantized (e.g. "after conv1+ReLU", "block output").
struct ActSite {
  std::string name;
  bool non_negative = false;  ///< known >= 0 (after ReLU): an unsigned grid loses nothing
  SiteRole role = SiteRole::Activation;
};

/// Hooks the engine gives a unit's forward. The defaults run the FP model.
class UnitContext {
 public:
  virtual ~UnitContext() = default;
  /// Called by ModelAdapter::forward before each unit runs (contexts that keep per-unit state use it).
  virtual void begin_unit(const class Unit& unit) {}
  /// The weight layer `i` of the unit should use now.
  virtual torch::Tensor weight(const QuantLayer& layer, int i) { return layer.weight; }
  /// Called with the input of layer `i` just before it runs (GPTQ Hessians, SmoothQuant stats).
  virtual void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) {}
  /// Called with the output of layer `i` just after it runs (PD-Quant's BatchNorm statistics).
  virtual void observe_output(const QuantLayer& layer, int i, const torch::Tensor& y) {}
  /// Applied at activation site `j`; identity in FP.
  virtual torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) { return x; }
  /// A fresh context that acts as this one, for a forward on another thread; null where the context keeps state
  /// that must not be split (statistics, random streams). Evaluation scores one window per thread with it, so its
  /// numbers do not depend on the thread count. The FP context forks; a subclass forks only if it says how.
  virtual std::unique_ptr<UnitContext> fork() const;
  /// Runs layer i: observe its input, apply it with weight(i), observe its output.
  torch::Tensor run(const QuantLayer& layer, int i, const torch::Tensor& x) {
    observe_input(layer, i, x);
    torch::Tensor y = layer.apply(x, weight(layer, i));
    observe_output(layer, i, y);
    return y;
  }
};

/// A context that only watches layer inputs (GPTQ Hessians, SmoothQuant maxima). Weights, activation sites
/// and begin_unit go to `inner` (FP when null), so statistics can ride along any engine path.
class ObservingContext : public UnitContext {
 public:
  explicit ObservingContext(UnitContext* inner = nullptr) : inner_(inner) {}
  void begin_unit(const class Unit& unit) override {
    if (inner_) inner_->begin_unit(unit);
  }
  torch::Tensor weight(const QuantLayer& layer, int i) override { return inner_ ? inner_->weight(layer, i) : layer.weight; }
  torch::Tensor act(const ActSite& site, int j, const torch::Tensor& x) override {
    return inner_ ? inner_->act(site, j, x) : x;
  }
  void observe_input(const QuantLayer& layer, int i, const torch::Tensor& x) final {
    if (inner_) inner_->observe_input(layer, i, x);
    observe(layer, i, x);
  }
  void observe_output(const QuantLayer& layer, int i, const torch::Tensor& y) override {
    if (inner_) inner_->observe_output(layer, i, y);
  }

 protected:
  virtual void observe(const QuantLayer& layer, int i, const torch::Tensor& x) = 0;
  /// The entry of `layer_name` in a per-layer map; ModelError listing the observed layers when absent.
  template <class Map>
  static const typename Map::mapped_type& observed(const Map& m, const std::string& layer_name, const char* who) {
    auto it = m.find(layer_name);
    if (it == m.end()) {
      std::string known;
      for (const auto& kv : m) known += (known.empty() ? "" : ", ") + kv.first;
      throw ModelError(detail::concat(who, ": no inputs were observed for layer '", layer_name, "' -> observed: [",
                                      known, "]; hint: run the forward with this context"));
    }
    return it->second;
  }

 private:
  UnitContext* inner_;
};

/// A reconstruction unit (a ResNet BasicBlock, a stem conv, a Llama decoder layer, ...).
class Unit {
 public:
  virtual ~Unit() = default;
  virtual std::string name() const = 0;
  /// Quantizable layers in the order forward() runs them. The engine may replace `weight` in place
  /// (e.g. with frozen quantized values) once the unit is done.
  virtual std::vector<QuantLayer>& layers() = 0;
  virtual const std::vector<ActSite>& act_sites() const = 0;
  /// x -> y for this unit, calling ctx.run(layers()[i], i, ...) for every layer and ctx.act(site, j, ...)
  /// at every activation site.
  virtual torch::Tensor forward(const torch::Tensor& x, UnitContext& ctx) = 0;
  /// Shards a CPU train step cuts its batch into, each run forward and backward on one thread, their gradients
  /// summed in order. Pays where a unit is many small ops that gain little from splitting each over threads;
  /// 1 keeps every op multi-threaded, as convolutions need (oneDNN's kernels crawl nested in a parallel region).
  /// A property of the unit, not of the thread count, so results do not depend on the thread count.
  virtual int64_t step_shards() const { return 1; }
};

/// A normalisation whose gain feeds quantizable layers directly (norm -> Linear): where SmoothQuant folds its
/// per-channel scales (gain /= s, every consumer's weight columns *= s; methods.md §7.3).
struct NormFeed {
  std::string name;                 ///< key of the saved scales, e.g. "layers.0.attention_norm"
  torch::Tensor* gain = nullptr;    ///< [C], changed in place
  std::vector<QuantLayer*> layers;  ///< every consumer of the norm's output, weights [out, C]
};

/// Two layers joined only through a per-channel positively homogeneous activation (ReLU, or ReLU clipped at a
/// per-channel `clip`): dividing the producer's output channel i (weights and bias, and the clip) by s_i and
/// multiplying the consumer's input channel i by s_i leaves the model's function unchanged. Where cross-layer
/// equalization applies (Nagel et al. 2019, methods.md).
struct EqualizationPair {
  std::string name;                ///< key of the saved scales: "<producer>><consumer>"
  QuantLayer* producer = nullptr;  ///< its output channels are the pair's channels
  QuantLayer* consumer = nullptr;  ///< its input channels are the pair's channels (groups allowed: depthwise)
  torch::Tensor* clip = nullptr;   ///< [C] upper clip of the activation between (ReLU6 -> 6s), or null for ReLU
};

/// What a named tensor is to its model, so an exporter can write all of it.
enum class TensorRole { Embedding, Norm, Weight, Bias, Classifier };

/// One tensor of the model by its adapter's name (torchvision / HF style). `layer` is set for the weight and
/// bias of a quantizable layer (their values live in the layer and may be replaced by quantization).
struct NamedTensor {
  std::string name;
  TensorRole role = TensorRole::Weight;
  torch::Tensor* tensor = nullptr;
  QuantLayer* layer = nullptr;
};

class ModelAdapter {
 public:
  virtual ~ModelAdapter() = default;
  virtual std::string arch() const = 0;  ///< "resnet_cifar", "resnet18", "mobilenet_v2", "llama"
  /// Input -> first unit's input (token embedding for LMs; identity for CNNs).
  virtual torch::Tensor prologue(const torch::Tensor& input) { return input; }
  /// Last unit's output -> logits (final norm + classifier for LMs; identity for CNNs whose fc is a unit).
  virtual torch::Tensor epilogue(const torch::Tensor& x) { return x; }
  virtual std::vector<Unit*> units() = 0;
  /// Move all tensors to a device.
  virtual void to(torch::Device device) = 0;

  /// Full forward with a context (FP when ctx is a plain UnitContext).
  torch::Tensor forward(const torch::Tensor& input, UnitContext& ctx);
  torch::Tensor forward(const torch::Tensor& input) {
    UnitContext fp;
    return forward(input, fp);
  }
  /// Every quantizable layer across units, in forward order.
  std::vector<QuantLayer*> all_layers();
  /// Norms whose output feeds quantizable layers directly (SmoothQuant's fold points); none by default.
  virtual std::vector<NormFeed> norm_feeds() { return {}; }
  /// Layer pairs cross-layer equalization may rescale, in forward order; none by default.
  virtual std::vector<EqualizationPair> equalization_pairs() { return {}; }
  /// Every tensor of the model with its role. The default lists the layers' weights and biases; adapters with
  /// embeddings, norms or a separate classifier add them.
  virtual std::vector<NamedTensor> named_tensors();
};

}  // namespace flexquant
