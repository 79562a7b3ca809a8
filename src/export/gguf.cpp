// GGUF v3 reader and writer (format: include/flexquant/gguf.h).
#include "flexquant/gguf.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "flexquant/error.h"

namespace flexquant {
namespace fs = std::filesystem;

GgufValue GgufValue::u32(uint32_t v) { GgufValue x; x.kind = GgufKind::U32; x.i = v; return x; }
GgufValue GgufValue::i32(int32_t v) { GgufValue x; x.kind = GgufKind::I32; x.i = v; return x; }
GgufValue GgufValue::f32(float v) { GgufValue x; x.kind = GgufKind::F32; x.f = v; return x; }
GgufValue GgufValue::boolean(bool v) { GgufValue x; x.kind = GgufKind::Bool; x.i = v; return x; }
GgufValue GgufValue::str(std::string v) { GgufValue x; x.kind = GgufKind::String; x.s = std::move(v); return x; }
GgufValue GgufValue::array(GgufKind elem, std::vector<GgufValue> items) {
  GgufValue x;
  x.kind = GgufKind::Array;
  x.elem = elem;
  x.items = std::move(items);
  return x;
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}
int64_t GgufTensorInfo::bytes() const { return numel() / ne.at(0) * ggml_row_bytes(type, ne.at(0)); }

namespace {

constexpr uint64_t kMaxCount = uint64_t{1} << 24;  // tensors, kv pairs, array items: far above any real model
constexpr uint64_t kMaxString = uint64_t{1} << 26;
constexpr int64_t kMaxElements = int64_t{1} << 48;  // per tensor; keeps numel() and bytes() far from overflow

// Bounded little-endian reads that name the file and the field on failure.
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    FQ_CHECK(in_.good(), IoError, "cannot open GGUF file \"", path, "\"");
    in_.seekg(0, std::ios::end);
    size_ = static_cast<uint64_t>(in_.tellg());
    in_.seekg(0);
  }
  void bytes(void* dst, uint64_t n, const std::string& field) {
    FQ_CHECK(pos() + n <= size_, IoError, "GGUF file \"", path_, "\" is truncated: ", field, " needs ", n,
             " bytes at offset ", pos(), " but the file has ", size_, " bytes");
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    pos_ += n;
  }
  template <class T>
  T scalar(const std::string& field) {
    T v;
    bytes(&v, sizeof(T), field);
    return v;
  }
  std::string string(const std::string& field) {
    const uint64_t n = scalar<uint64_t>(field + " (length)");
    FQ_CHECK(n <= kMaxString && n <= remaining(), IoError, "GGUF file \"", path_, "\" is corrupt: ", field, " claims ", n,
             " bytes but ", remaining(), " follow");
    std::string s(n, '\0');
    bytes(s.data(), n, field);
    return s;
  }
  uint64_t pos() const { return pos_; }  // kept here: tellg() is a system call, and a vocabulary takes ~10^5 reads
  uint64_t remaining() const { return size_ - pos_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t size_ = 0, pos_ = 0;
};

GgufValue read_value(Reader& r, GgufKind kind, const std::string& key, int depth) {
  GgufValue v;
  v.kind = kind;
  switch (kind) {
    case GgufKind::U8: v.i = r.scalar<uint8_t>(key); break;
    case GgufKind::I8: v.i = r.scalar<int8_t>(key); break;
    case GgufKind::U16: v.i = r.scalar<uint16_t>(key); break;
    case GgufKind::I16: v.i = r.scalar<int16_t>(key); break;
    case GgufKind::U32: v.i = r.scalar<uint32_t>(key); break;
    case GgufKind::I32: v.i = r.scalar<int32_t>(key); break;
    case GgufKind::U64: v.i = static_cast<int64_t>(r.scalar<uint64_t>(key)); break;
    case GgufKind::I64: v.i = r.scalar<int64_t>(key); break;
    case GgufKind::F32: v.f = r.scalar<float>(key); break;
    case GgufKind::F64: v.f = r.scalar<double>(key); break;
    case GgufKind::Bool: v.i = r.scalar<uint8_t>(key) != 0; break;
    case GgufKind::String: v.s = r.string(key); break;
    case GgufKind::Array: {
      FQ_CHECK(depth == 0, IoError, "GGUF file \"", r.path(), "\" is corrupt: metadata \"", key, "\" nests arrays");
      const uint32_t elem = r.scalar<uint32_t>(key + " (array type)");
      FQ_CHECK(elem <= static_cast<uint32_t>(GgufKind::F64) && elem != static_cast<uint32_t>(GgufKind::Array), IoError,
               "GGUF file \"", r.path(), "\" is corrupt: metadata \"", key, "\" has array element type ", elem);
      const uint64_t n = r.scalar<uint64_t>(key + " (array length)");
      // Every item takes at least 1 byte (a string: its 8-byte length), so the rest of the file bounds the count
      // before anything is reserved for it.
      const uint64_t min_item = elem == static_cast<uint32_t>(GgufKind::String) ? 8 : 1;
      FQ_CHECK(n <= kMaxCount && n <= r.remaining() / min_item, IoError, "GGUF file \"", r.path(),
               "\" is corrupt: metadata \"", key, "\" claims ", n, " items but ", r.remaining(), " bytes follow");
      v.elem = static_cast<GgufKind>(elem);
      v.items.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.items.push_back(read_value(r, v.elem, key, depth + 1));
      break;
    }
    default:
      throw IoError(fmt::format("GGUF file \"{}\" is corrupt: metadata \"{}\" has value type {}", r.path(), key,
                                static_cast<uint32_t>(kind)));
  }
  return v;
}

class Writer {
 public:
  explicit Writer(std::ofstream& out) : out_(out) {}
  template <class T>
  void scalar(T v) { out_.write(reinterpret_cast<const char*>(&v), sizeof(T)); n_ += sizeof(T); }
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    out_.write(s.data(), static_cast<std::streamsize>(s.size()));
    n_ += s.size();
  }
  void raw(const std::vector<uint8_t>& b) {
    out_.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    n_ += b.size();
  }
  void pad(uint64_t align) {
    while (n_ % align) scalar<uint8_t>(0);
  }
  void value(const GgufValue& v) {
    switch (v.kind) {
      case GgufKind::U8: scalar<uint8_t>(static_cast<uint8_t>(v.i)); break;
      case GgufKind::I8: scalar<int8_t>(static_cast<int8_t>(v.i)); break;
      case GgufKind::U16: scalar<uint16_t>(static_cast<uint16_t>(v.i)); break;
      case GgufKind::I16: scalar<int16_t>(static_cast<int16_t>(v.i)); break;
      case GgufKind::U32: scalar<uint32_t>(static_cast<uint32_t>(v.i)); break;
      case GgufKind::I32: scalar<int32_t>(static_cast<int32_t>(v.i)); break;
      case GgufKind::U64: scalar<uint64_t>(static_cast<uint64_t>(v.i)); break;
      case GgufKind::I64: scalar<int64_t>(v.i); break;
      case GgufKind::F32: scalar<float>(static_cast<float>(v.f)); break;
      case GgufKind::F64: scalar<double>(v.f); break;
      case GgufKind::Bool: scalar<uint8_t>(v.i ? 1 : 0); break;
      case GgufKind::String: string(v.s); break;
      case GgufKind::Array:
        scalar<uint32_t>(static_cast<uint32_t>(v.elem));
        scalar<uint64_t>(v.items.size());
        for (const auto& it : v.items) value(it);
        break;
    }
  }
  uint64_t written() const { return n_; }

 private:
  std::ofstream& out_;
  uint64_t n_ = 0;
};

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

GgufFile GgufFile::read(const std::string& path) {
  Reader r(path);
  GgufFile f;
  f.path = path;
  char magic[4];
  r.bytes(magic, 4, "magic");
  FQ_CHECK(std::memcmp(magic, "GGUF", 4) == 0, IoError, "\"", path, "\" is not a GGUF file (magic is not \"GGUF\")");
  f.version = r.scalar<uint32_t>("version");
  FQ_CHECK(f.version == 2 || f.version == 3, IoError, "GGUF file \"", path, "\" has version ", f.version,
           " -> this flexquant reads versions 2 and 3", f.version > 3 ? "; hint: a newer flexquant may read it" : "");
  const uint64_t n_tensors = r.scalar<uint64_t>("tensor_count");
  const uint64_t n_kv = r.scalar<uint64_t>("metadata_kv_count");
  FQ_CHECK(n_tensors <= kMaxCount && n_kv <= kMaxCount, IoError, "GGUF file \"", path, "\" is corrupt: header claims ",
           n_tensors, " tensors and ", n_kv, " metadata pairs");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.string(fmt::format("metadata key {}", i));
    const uint32_t kind = r.scalar<uint32_t>("type of metadata \"" + key + "\"");
    f.metadata.emplace_back(key, read_value(r, static_cast<GgufKind>(kind), key, 0));
  }
  if (f.has("general.alignment")) {
    f.alignment = static_cast<uint64_t>(f.at("general.alignment").i);
    FQ_CHECK(f.alignment > 0 && f.alignment <= 65536 && (f.alignment & (f.alignment - 1)) == 0, IoError, "GGUF file \"",
             path, "\": general.alignment ", f.alignment, " is not a power of two");
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.string(fmt::format("name of tensor {}", i));
    const uint32_t nd = r.scalar<uint32_t>("n_dims of tensor \"" + t.name + "\"");
    FQ_CHECK(nd >= 1 && nd <= 4, IoError, "GGUF file \"", path, "\": tensor \"", t.name, "\" has ", nd, " dimensions");
    int64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      t.ne.push_back(r.scalar<int64_t>("dims of tensor \"" + t.name + "\""));
      FQ_CHECK(t.ne.back() > 0 && t.ne.back() <= kMaxElements / numel, IoError, "GGUF file \"", path, "\": tensor \"",
               t.name, "\" has dimension ", t.ne.back(), " -> allowed: positive, at most 2^48 elements in all");
      numel *= t.ne.back();
    }
    t.type = ggml_type_from_id(r.scalar<uint32_t>("type of tensor \"" + t.name + "\""),
                               "GGUF file \"" + path + "\", tensor \"" + t.name + "\"");
    FQ_CHECK(t.ne[0] % ggml_type_info(t.type).block == 0, IoError, "GGUF file \"", path, "\": tensor \"", t.name,
             "\" rows of ", t.ne[0], " do not fit ", ggml_type_info(t.type).name, " blocks");
    t.offset = r.scalar<uint64_t>("offset of tensor \"" + t.name + "\"");
    FQ_CHECK(t.offset % f.alignment == 0, IoError, "GGUF file \"", path, "\": tensor \"", t.name,
             "\" offset is not aligned");
    FQ_CHECK(names.insert(t.name).second, IoError, "GGUF file \"", path, "\": tensor \"", t.name, "\" appears twice");
    f.tensors.push_back(std::move(t));
  }
  f.data_offset = align_up(r.pos(), f.alignment);
  for (const auto& t : f.tensors) {
    const uint64_t room = r.size() - std::min(r.size(), f.data_offset);  // in the data section
    FQ_CHECK(t.offset <= room && static_cast<uint64_t>(t.bytes()) <= room - t.offset, IoError, "GGUF file \"", path,
             "\" is truncated: tensor \"", t.name, "\" needs ", t.bytes(), " bytes at data offset ", t.offset,
             " but the data section holds ", room);
  }
  return f;
}

bool GgufFile::has(const std::string& key) const {
  for (const auto& kv : metadata)
    if (kv.first == key) return true;
  return false;
}

const GgufValue& GgufFile::at(const std::string& key) const {
  for (const auto& kv : metadata)
    if (kv.first == key) return kv.second;
  throw IoError("GGUF file \"" + path + "\" has no metadata \"" + key + "\"");
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& t) const {
  std::ifstream in(path, std::ios::binary);
  FQ_CHECK(in.good(), IoError, "cannot open GGUF file \"", path, "\"");
  std::vector<uint8_t> b(static_cast<size_t>(t.bytes()));
  in.seekg(static_cast<std::streamoff>(data_offset + t.offset));
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size()));
  FQ_CHECK(in.good(), IoError, "GGUF file \"", path, "\" is truncated in tensor \"", t.name, "\"");
  return b;
}

torch::Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  FQ_CHECK(t != nullptr, IoError, "GGUF file \"", path, "\" has no tensor \"", name, "\"");
  auto bytes = tensor_bytes(*t);
  auto values = ggml_dequantize(t->type, bytes.data(), t->numel() / t->ne[0], t->ne[0]);
  std::vector<int64_t> shape(t->ne.rbegin(), t->ne.rend());
  return torch::from_blob(values.data(), shape, torch::kFloat).clone();
}

void GgufWriter::set(const std::string& key, GgufValue v) {
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, GgmlType type, std::vector<uint8_t> bytes) {
  for (const auto& t : infos_) FQ_CHECK(t.name != name, ConfigError, "GGUF writer: tensor \"", name, "\" added twice");
  GgufTensorInfo t;
  t.name = name;
  t.ne = std::move(ne);
  t.type = type;
  FQ_CHECK(t.ne.at(0) % ggml_type_info(type).block == 0 && static_cast<int64_t>(bytes.size()) == t.bytes(), ConfigError,
           "GGUF writer: tensor \"", name, "\" has ", bytes.size(), " bytes but ", ggml_type_info(type).name,
           " needs ", t.bytes());
  infos_.push_back(std::move(t));
  data_.push_back(std::move(bytes));
}

int64_t GgufWriter::write(const std::string& path) const {
  const uint64_t align = 32;
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    FQ_CHECK(out.good(), IoError, "cannot write \"", tmp, "\"; hint: does the folder exist and is it writable?");
    Writer h(out);
    h.raw({'G', 'G', 'U', 'F'});
    h.scalar<uint32_t>(kGgufVersion);
    h.scalar<uint64_t>(infos_.size());
    h.scalar<uint64_t>(kv_.size());
    for (const auto& [k, v] : kv_) {
      h.string(k);
      h.scalar<uint32_t>(static_cast<uint32_t>(v.kind));
      h.value(v);
    }
    uint64_t offset = 0;
    for (const auto& t : infos_) {
      h.string(t.name);
      h.scalar<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      for (int64_t d : t.ne) h.scalar<int64_t>(d);
      h.scalar<uint32_t>(static_cast<uint32_t>(t.type));
      h.scalar<uint64_t>(offset);
      offset = align_up(offset + static_cast<uint64_t>(t.bytes()), align);
    }
    h.pad(align);
    for (size_t i = 0; i < infos_.size(); ++i) {
      h.raw(data_[i]);
      if (i + 1 < infos_.size()) h.pad(align);
    }
    out.flush();
    FQ_CHECK(out.good(), IoError, "writing \"", tmp, "\" failed (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  FQ_CHECK(!ec, IoError, "cannot move \"", tmp, "\" to \"", path, "\": ", ec.message());
  return static_cast<int64_t>(fs::file_size(path));
}

}  // namespace flexquant
