// Safetensors reader/writer on nlohmann-json (format spec: huggingface/safetensors README, "Format").
// Invariants: every tensor handed out is a contiguous CPU tensor owning its memory; every byte range is
// validated against the file size, the dtype x shape and the other ranges before any copy.
#include "flexquant/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "flexquant/error.h"

namespace flexquant {
namespace {

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  int64_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

std::string dtype_list() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

// Largest header the reader accepts; the reference implementation caps it at 100 MB as well.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct Entry {
  std::string name;
  const DtypeInfo* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

const torch::Tensor& SafeTensorsFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::string some;
    int k = 0;
    for (const auto& n : names) {
      if (k++ == 5) { some += ", ..."; break; }
      some += (some.empty() ? "" : ", ") + n;
    }
    throw ModelError(detail::concat("tensor \"", name, "\" not found in ", path, " -> it holds ",
                                    names.size(), " tensors (", some,
                                    ") -> hint: is this the right file / architecture?"));
  }
  return it->second;
}

std::string safetensors_dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  throw ConfigError(detail::concat("dtype ", c10::toString(type), " cannot be stored in safetensors -> allowed: ",
                                   dtype_list(), " -> hint: convert the tensor first"));
}

SafeTensorsFile load_safetensors(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  FQ_CHECK(fs::exists(path, ec), IoError, "safetensors file not found -> ", path,
           " -> hint: check the path (relative paths are taken from the current directory)");
  FQ_CHECK(fs::is_regular_file(path, ec), IoError, "safetensors path is not a regular file -> ", path);
  const uint64_t file_size = fs::file_size(path, ec);
  FQ_CHECK(!ec, IoError, "cannot stat safetensors file ", path, " -> ", ec.message());
  std::ifstream in(path, std::ios::binary);
  FQ_CHECK(in.good(), IoError, "cannot open safetensors file ", path, " for reading -> ", std::strerror(errno));

  FQ_CHECK(file_size >= 8, IoError, "truncated safetensors file ", path, " -> ", file_size,
           " bytes -> needs at least the 8-byte header length");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian
  FQ_CHECK(header_len <= file_size - 8, IoError, "truncated safetensors file ", path, " -> header length ",
           header_len, " but only ", file_size - 8, " bytes follow the length field -> hint: the file was cut "
           "short or is not safetensors");
  FQ_CHECK(header_len <= kMaxHeaderBytes, IoError, "safetensors header of ", path, " is too large -> ",
           header_len, " bytes -> at most ", kMaxHeaderBytes);

  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  FQ_CHECK(in.good(), IoError, "read error in ", path, " while reading the header");

  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(detail::concat("bad JSON header in safetensors file ", path, " -> ", e.what(),
                                 " -> hint: the file is corrupt or not safetensors"));
  }
  FQ_CHECK(j.is_object(), IoError, "safetensors header of ", path, " is not a JSON object -> ",
           j.type_name());

  const uint64_t data_size = file_size - 8 - header_len;
  SafeTensorsFile out;
  out.path = path;
  std::vector<Entry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      FQ_CHECK(v.is_object(), IoError, "__metadata__ in ", path, " must be an object of strings -> got ",
               v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        FQ_CHECK(m.value().is_string(), IoError, "__metadata__ value \"", m.key(), "\" in ", path,
                 " is not a string -> ", m.value().dump(), " -> safetensors metadata is string -> string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = detail::concat("tensor \"", name, "\" in ", path);
    FQ_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
             IoError, where, " is malformed -> ", v.dump(), " -> needs {dtype, shape, data_offsets}");
    FQ_CHECK(v["dtype"].is_string(), IoError, where, ": dtype is not a string -> ", v["dtype"].dump());
    const std::string dt = v["dtype"].get<std::string>();
    const DtypeInfo* info = find_dtype(dt);
    FQ_CHECK(info, IoError, where, " has unknown dtype -> \"", dt, "\" -> supported: ", dtype_list());
    const auto& shape = v["shape"];
    FQ_CHECK(shape.is_array(), IoError, where, ": shape is not an array -> ", shape.dump());
    Entry e{name, info, {}, 0, 0};
    uint64_t numel = 1;
    for (const auto& d : shape) {
      FQ_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), IoError, where,
               ": shape entries must be non-negative integers -> ", shape.dump());
      const uint64_t n = d.get<uint64_t>();
      FQ_CHECK(n == 0 || numel <= (uint64_t{1} << 62) / n, IoError, where, ": shape overflows -> ", shape.dump());
      numel *= n;
      e.shape.push_back(static_cast<int64_t>(n));
    }
    const auto& off = v["data_offsets"];
    FQ_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
             IoError, where, ": data_offsets must be [begin, end] non-negative integers -> ", off.dump());
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    FQ_CHECK(e.begin <= e.end, IoError, where, ": data_offsets begin > end -> ", off.dump());
    FQ_CHECK(e.end <= data_size, IoError, "truncated safetensors file: ", where, " has data_offsets ",
             off.dump(), " but the data section holds only ", data_size,
             " bytes -> hint: the file was cut short");
    FQ_CHECK(e.end - e.begin == numel * static_cast<uint64_t>(info->size), IoError, where,
             ": byte range does not match dtype x shape -> ", e.end - e.begin, " bytes for ", dt, " ",
             shape.dump(), " -> expected ", numel * info->size, " bytes");
    FQ_CHECK(!out.tensors.count(name), IoError, where, " appears twice");
    entries.push_back(e);
    out.names.push_back(name);
    out.tensors[name] = torch::Tensor();  // placeholder, filled below; also catches duplicates
  }

  // Byte ranges must not overlap (a corrupt or malicious header could alias tensors).
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Entry* a = by_offset[i - 1];
    const Entry* b = by_offset[i];
    const bool empty = a->begin == a->end || b->begin == b->end;
    FQ_CHECK(empty || b->begin >= a->end, IoError, "overlapping tensors in ", path, ": \"", a->name, "\" [",
             a->begin, ", ", a->end, ") and \"", b->name, "\" [", b->begin, ", ", b->end,
             ") -> byte ranges must be disjoint -> hint: the file is corrupt");
  }

  // One read of the data section, then one copy per tensor into memory it owns.
  std::vector<char> data(data_size);
  if (data_size) in.read(data.data(), static_cast<std::streamsize>(data_size));
  FQ_CHECK(in.good() || data_size == 0, IoError, "read error in ", path, " while reading tensor data");
  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data.data() + e.begin, e.end - e.begin);
    out.tensors[e.name] = t;
  }
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::vector<torch::Tensor> blobs;
  uint64_t offset = 0;
  for (const auto& [name, t0] : tensors) {
    FQ_CHECK(t0.defined(), ConfigError, "cannot save undefined tensor \"", name, "\" to ", path);
    FQ_CHECK(name != "__metadata__", ConfigError, "tensor name \"__metadata__\" is reserved in safetensors");
    torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
    const std::string dt = safetensors_dtype_name(t.scalar_type());
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dt}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    blobs.push_back(t);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned
  // Written under a temporary name and renamed: a crash or a full disk never leaves a half file at `path`.
  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  FQ_CHECK(out.good(), IoError, "cannot open ", tmp, " for writing -> ", std::strerror(errno),
           " -> hint: does the directory exist and is it writable?");
  unsigned char len_bytes[8];
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& t : blobs)
    if (t.numel()) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
  out.flush();
  const bool ok = out.good();
  out.close();
  if (!ok) std::remove(tmp.c_str());
  FQ_CHECK(ok, IoError, "write error on ", tmp, " -> ", std::strerror(errno), " -> hint: disk full?");
  FQ_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, IoError, "cannot rename ", tmp, " to ", path, " -> ",
           std::strerror(errno));
}

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

void check_tensor_set(const SafeTensorsFile& file, const std::vector<TensorSpec>& expected,
                      const std::string& arch, const std::vector<std::string>& ignored_suffixes) {
  std::vector<std::string> missing;
  std::map<std::string, const TensorSpec*> want;
  for (const auto& spec : expected) {
    want[spec.name] = &spec;
    if (!file.contains(spec.name)) missing.push_back(spec.name);
  }
  FQ_CHECK(missing.empty(), ModelError, "tensor \"", missing.empty() ? "" : missing.front(), "\" missing in ",
           file.path, " for arch ", arch, " -> ", missing.size(), " of ", expected.size(),
           " expected tensors missing -> hint: is this the right --arch for this file?");
  for (const auto& name : file.names) {
    if (want.count(name)) continue;
    bool ignored = false;
    for (const auto& suf : ignored_suffixes) ignored = ignored || ends_with(name, suf);
    FQ_CHECK(ignored, ModelError, "unexpected tensor \"", name, "\" in ", file.path, " for arch ", arch,
             " -> it has no place in this architecture -> hint: is this the right --arch for this file?");
  }
  for (const auto& spec : expected) {
    const auto sizes = file.at(spec.name).sizes().vec();
    FQ_CHECK(sizes == spec.shape, ModelError, "tensor \"", spec.name, "\" in ", file.path, " has wrong shape -> ",
             shape_str(sizes), " -> arch ", arch, " expects ", shape_str(spec.shape));
  }
}

void check_finite(const SafeTensorsFile& file, const std::vector<std::string>& names) {
  const std::vector<std::string>& list = names.empty() ? file.names : names;
  for (const auto& name : list) {
    const torch::Tensor& t = file.at(name);
    if (!t.is_floating_point()) continue;
    const int64_t bad = (~torch::isfinite(t)).sum().item<int64_t>();
    FQ_CHECK(bad == 0, NumericError, "tensor \"", name, "\" in ", file.path, " holds non-finite values -> ", bad,
             " of ", t.numel(), " are NaN/inf -> weights must be finite -> hint: the checkpoint is corrupt");
  }
}

}  // namespace flexquant
