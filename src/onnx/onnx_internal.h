// Shared by the ONNX loader and the op implementations (internal to fq_onnx).
#pragma once
#include <torch/types.h>

#include <string>

namespace onnx {
class TensorProto;
}

namespace flexquant {

/// torch dtype of an ONNX TensorProto::DataType; ModelError naming `what` for the unsupported ones.
torch::ScalarType onnx_dtype(int32_t data_type, const std::string& what);
/// The value of a TensorProto (raw_data or the typed fields).
torch::Tensor onnx_tensor(const onnx::TensorProto& p, const std::string& what);

}  // namespace flexquant
