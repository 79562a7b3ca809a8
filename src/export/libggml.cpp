// libggml-base through dlopen, and the importance-matrix collector (include/flexquant/libggml.h).
#include "flexquant/libggml.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>

#include "flexquant/error.h"

namespace flexquant {
namespace fs = std::filesystem;

const LibGgml& LibGgml::get() {
  static const LibGgml lib = [] {
    const char* env = std::getenv("FLEXQUANT_LLAMACPP_DIR");
    fs::path dir = env ? fs::path(env) : fs::path(FLEXQUANT_SOURCE_DIR) / "tools" / "llamacpp";
    LibGgml l;
    l.path = (dir / "node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so").string();
    void* h = l.handle_ = dlopen(l.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    FQ_CHECK(h != nullptr, IoError, "llama.cpp's libggml-base is not loadable (", l.path, "): ",
             dlerror() ? dlerror() : "not found", " -> run scripts/setup.sh");
    l.chunk_ = reinterpret_cast<QuantizeChunk>(dlsym(h, "ggml_quantize_chunk"));
    l.init_ = reinterpret_cast<QuantizeInit>(dlsym(h, "ggml_quantize_init"));
    FQ_CHECK(l.chunk_ && l.init_, IoError, l.path, " has no ggml_quantize_chunk / ggml_quantize_init");
    return l;
  }();
  return lib;
}

std::vector<uint8_t> LibGgml::quantize(GgmlType t, const float* x, int64_t rows, int64_t n, const float* imatrix) const {
  FQ_CHECK(n % ggml_type_info(t).block == 0, ConfigError, "rows of ", n, " do not fit ", ggml_type_info(t).name, " blocks");
  init_(static_cast<int>(t));
  std::vector<uint8_t> out(static_cast<size_t>(rows * ggml_row_bytes(t, n)));
  const size_t written = chunk_(static_cast<int>(t), x, out.data(), 0, rows, n, imatrix);
  FQ_CHECK(written == out.size(), InternalError, "ggml_quantize_chunk wrote ", written, " bytes, expected ", out.size());
  return out;
}

std::vector<float> LibGgml::dequantize(GgmlType t, const uint8_t* data, int64_t rows, int64_t n) const {
  FQ_CHECK(n % ggml_type_info(t).block == 0, ConfigError, "rows of ", n, " do not fit ", ggml_type_info(t).name, " blocks");
  std::string sym = std::string("dequantize_row_") + ggml_type_info(t).name;
  if (sym.back() == 'k') sym.back() = 'K';  // ggml spells the k-quants q4_K
  using DequantizeRow = void (*)(const void*, float*, int64_t);
  auto fn = reinterpret_cast<DequantizeRow>(dlsym(handle_, sym.c_str()));
  FQ_CHECK(fn != nullptr, IoError, path, " has no ", sym);
  std::vector<float> out(static_cast<size_t>(rows * n));
  fn(data, out.data(), rows * n);
  return out;
}

void ImatrixCollector::observe(const QuantLayer& layer, int, const torch::Tensor& x) {
  FQ_CHECK(layer.kind == LayerKind::Linear, ConfigError, "imatrix: layer \"", layer.name,
           "\" is a convolution; importance matrices are for Linear layers");
  torch::Tensor rows = x.detach().reshape({-1, x.size(-1)}).to(torch::kFloat);
  auto& [sum, count] = sum_[layer.name];
  torch::Tensor s = rows.pow(2).sum(0);
  sum = sum.defined() ? sum + s : s;
  count += rows.size(0);
}

std::map<std::string, torch::Tensor> ImatrixCollector::imatrix() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, sc] : sum_) out[name] = (sc.first / static_cast<double>(sc.second)).contiguous();
  return out;
}

}  // namespace flexquant
