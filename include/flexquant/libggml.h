// llama.cpp's own quantizer, called in its own library: libggml-base from node-llama-cpp (tools/llamacpp, set up
// by scripts/setup.sh), opened with dlopen. The baselines "llama.cpp round-to-nearest" and "llama.cpp with an
// importance matrix" are then literally llama.cpp's code, and tests compare ggml_quantize_ref against it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "flexquant/adapter.h"
#include "flexquant/ggml_types.h"

namespace flexquant {

class LibGgml {
 public:
  /// The library under FLEXQUANT_LLAMACPP_DIR (default <source>/tools/llamacpp); IoError with the set-up command
  /// when it is missing.
  static const LibGgml& get();
  /// ggml_quantize_chunk: `rows` rows of `n` floats into `t`'s blocks; `imatrix` [n] per-column importance
  /// (llama.cpp's imatrix: mean of squared activations) or null for its reference rounding.
  std::vector<uint8_t> quantize(GgmlType t, const float* x, int64_t rows, int64_t n, const float* imatrix) const;
  /// ggml's own dequantize_row_<type> (exported by libggml-base) of `rows` rows of `n` weights.
  std::vector<float> dequantize(GgmlType t, const uint8_t* data, int64_t rows, int64_t n) const;
  std::string path;

 private:
  void* handle_ = nullptr;
  using QuantizeChunk = size_t (*)(int, const float*, void*, int64_t, int64_t, int64_t, const float*);
  using QuantizeInit = void (*)(int);
  QuantizeChunk chunk_ = nullptr;
  QuantizeInit init_ = nullptr;
};

/// A context that accumulates, per layer, the mean of x^2 over every row of its inputs (per input column), as
/// llama.cpp's imatrix tool does. Weights and activation sites go to `inner` (FP when null).
class ImatrixCollector : public ObservingContext {
 public:
  using ObservingContext::ObservingContext;
  /// Per-layer [in] fp32 means (Linear layers; a conv's input columns are not its weight's columns: refused).
  std::map<std::string, torch::Tensor> imatrix() const;

 protected:
  void observe(const QuantLayer& layer, int i, const torch::Tensor& x) override;

 private:
  std::map<std::string, std::pair<torch::Tensor, int64_t>> sum_;
};

}  // namespace flexquant
