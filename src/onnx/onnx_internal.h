// Shared by the ONNX loader and the op implementations (internal to fq_onnx).
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

namespace onnx {
class TensorProto;
}

namespace flexquant {

/// torch dtype of an ONNX TensorProto::DataType; ModelError naming `what` for the unsupported ones.
torch::ScalarType onnx_dtype(int32_t data_type, const std::string& what);
/// The value of a TensorProto (raw_data or the typed fields).
torch::Tensor onnx_tensor(const onnx::TensorProto& p, const std::string& what);

/// Explicit [begin_h, begin_w, end_h, end_w] pads of a 2-D window op (Conv, pools) on input X: its pads, or its
/// auto_pad for kernel k, strides s and dilations d.
std::vector<int64_t> onnx_window_pads(const struct OnnxNode& n, const torch::Tensor& X, const std::vector<int64_t>& k,
                                      const std::vector<int64_t>& s, const std::vector<int64_t>& d);

}  // namespace flexquant
