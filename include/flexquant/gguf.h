// GGUF v3 files (ggml's model container, read and written from its public specification, ggml/docs/gguf.md):
//   "GGUF" u32 version | u64 tensor_count | u64 kv_count | kv pairs | tensor infos | pad to alignment | data
// A kv pair is a string key, a u32 value type and the value; a tensor info is its name, u32 n_dims, u64 ne[n_dims]
// (ne[0] = the row length), u32 ggml type and u64 offset into the data section (each aligned to
// general.alignment, 32 by default). Little-endian throughout.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "flexquant/ggml_types.h"

namespace flexquant {

constexpr uint32_t kGgufVersion = 3;

/// GGUF metadata value types (the u32 tag before each value).
enum class GgufKind : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64 };

/// One metadata value: a scalar (i for integers and bool, f for floats, s for strings) or an array of items of
/// one kind.
struct GgufValue {
  GgufKind kind = GgufKind::U32;
  int64_t i = 0;
  double f = 0;
  std::string s;
  GgufKind elem = GgufKind::U32;  ///< arrays only
  std::vector<GgufValue> items;   ///< arrays only

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  static GgufValue array(GgufKind elem, std::vector<GgufValue> items);
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  ///< ne[0] is the row length (our [out, in] weight has ne = {in, out})
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;      ///< from the start of the data section
  int64_t numel() const;
  int64_t bytes() const;
};

/// A GGUF file's header, metadata and tensor directory; tensor data is read on demand.
class GgufFile {
 public:
  /// Reads and validates the header, metadata and tensor infos. IoError naming the file and the field for a
  /// missing, truncated, corrupt or newer-version file (this reader takes versions 2 and 3), and for an
  /// unsupported tensor type (listing the supported ones).
  static GgufFile read(const std::string& path);

  uint32_t version = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata;
  std::vector<GgufTensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;
  std::string path;

  bool has(const std::string& key) const;
  /// The value of `key`; IoError naming the file and key when absent.
  const GgufValue& at(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  /// The raw bytes of a tensor.
  std::vector<uint8_t> tensor_bytes(const GgufTensorInfo& t) const;
  /// The tensor dequantized to fp32, shaped [ne[n-1], ..., ne[0]] (row-major; a weight comes back [out, in]).
  torch::Tensor tensor(const std::string& name) const;
};

/// Collects metadata and tensors, then writes one GGUF v3 file (to a temporary name, renamed at the end, so a
/// failure never leaves a half-written file under the final name).
class GgufWriter {
 public:
  void set(const std::string& key, GgufValue v);
  /// `bytes` must hold exactly the tensor's data in `type` (ConfigError otherwise); names must be unique.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, GgmlType type, std::vector<uint8_t> bytes);
  /// Returns the file size in bytes.
  int64_t write(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> infos_;
  std::vector<std::vector<uint8_t>> data_;
};

}  // namespace flexquant
