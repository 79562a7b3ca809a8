// Safetensors reader/writer (own code on nlohmann-json) and tensor-set validation for model loaders.
//
// File layout (https://github.com/huggingface/safetensors, "Format"):
//   <u64 little-endian N> <N bytes of JSON header> <raw little-endian tensor data>
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the start of the data section) and may hold "__metadata__": {string: string}.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace flexquant {

/// An entire safetensors file, loaded into memory.
struct SafeTensorsFile {
  std::string path;                               ///< where it was read from (for error messages)
  std::vector<std::string> names;                 ///< tensor names in header order
  std::map<std::string, torch::Tensor> tensors;   ///< CPU tensors, contiguous, owning their memory
  std::map<std::string, std::string> metadata;    ///< the "__metadata__" entry (empty if absent)

  /// The tensor called `name`. Throws ModelError naming the missing tensor and the file.
  const torch::Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
};

/// Reads a whole safetensors file. Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
/// Throws IoError (naming the file, and the tensor where one is at fault) for: a missing/unreadable file,
/// a header length beyond the file, bad JSON, an unknown dtype, a malformed entry, data offsets beyond
/// the file, a byte range that does not match dtype x shape, overlapping byte ranges, or non-string
/// metadata values.
SafeTensorsFile load_safetensors(const std::string& path);

/// Writes `tensors` (any device, any layout; copied to contiguous CPU) in name order, with optional
/// `__metadata__`. The header is padded with spaces to a multiple of 8 bytes, as the reference writer
/// does. Throws IoError if the file cannot be written and ConfigError for an unsupported dtype.
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Safetensors dtype string ("F32", ...) for a torch dtype; ConfigError if it has none.
std::string safetensors_dtype_name(torch::ScalarType type);

/// One tensor an architecture expects: its name and exact shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

/// Checks that `file` holds exactly the tensors in `expected` with exactly those shapes. Names ending in
/// one of `ignored_suffixes` (e.g. "num_batches_tracked" from torchvision state dicts) are allowed
/// extras. Throws ModelError naming the first missing tensor (and how many are missing), the first
/// unexpected one, or the first wrong shape (expected vs found). `arch` names the architecture in
/// messages.
void check_tensor_set(const SafeTensorsFile& file, const std::vector<TensorSpec>& expected,
                      const std::string& arch, const std::vector<std::string>& ignored_suffixes = {});

/// Throws NumericError naming the first floating-point tensor (among `names`, or all if empty) that
/// holds NaN or inf, with the count of bad values.
void check_finite(const SafeTensorsFile& file, const std::vector<std::string>& names = {});

}  // namespace flexquant
