// .fqz reader/writer (docs/export-format.md). Codes are bit-packed LSB-first; everything else is fp32.
#include "flexquant/qmodel.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "flexquant/error.h"
#include "qstate_io.h"
#include "flexquant/equalize.h"
#include "flexquant/smoothquant.h"
#include "flexquant/runtime.h"
#include "flexquant/safetensors.h"

namespace flexquant {
namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;

// Version 1 files name only "bits" (integers); version 2 names the format.
WeightQuantSpec spec_from_json(const json& j) {
  WeightQuantSpec s;
  s.format = j.contains("format") ? Format::parse(j.at("format").get<std::string>()) : int_weight_format(j.at("bits"));
  s.symmetric = j.at("symmetric");
  s.granularity = parse_granularity(j.at("granularity"));
  s.group_size = j.at("group_size");
  s.init = parse_scale_init(j.value("init", "mse"));
  s.scale_dtype = parse_scale_dtype(j.value("scale_dtype", "fp32"));
  return s;
}

json spec_to_json(const WeightQuantSpec& s) {
  return {{"format", s.format.name()}, {"bits", s.bits()}, {"symmetric", s.symmetric}, {"granularity", to_string(s.granularity)},
          {"group_size", s.group_size}, {"init", to_string(s.init)}, {"scale_dtype", to_string(s.scale_dtype)}};
}

std::string meta_or_throw(const SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata.find(key);
  FQ_CHECK(it != f.metadata.end(), IoError, "\"", f.path, "\" is not a flexquant quantized model: metadata \"", key,
           "\" is missing; hint: make one with `flexquant quantize`");
  return it->second;
}

QModelInfo info_from(const SafeTensorsFile& f) {
  FQ_CHECK(f.metadata.count("format") && f.metadata.at("format") == "flexquant.qmodel", IoError, "\"", f.path,
           "\" is not a flexquant quantized model (no format=flexquant.qmodel metadata); hint: pass an .fqz written "
           "by `flexquant quantize`, or give the FP model with --arch");
  int ver = std::stoi(meta_or_throw(f, "format_version"));
  FQ_CHECK(ver <= kQModelFormatVersion, IoError, "\"", f.path, "\" has format_version ", ver,
           " but this flexquant reads up to ", kQModelFormatVersion, "; hint: upgrade flexquant");
  QModelInfo info;
  info.arch = meta_or_throw(f, "arch");
  info.source_model = meta_or_throw(f, "source_model");
  info.source_hash = meta_or_throw(f, "source_hash");
  info.recipe_json = meta_or_throw(f, "recipe");
  info.calibration = meta_or_throw(f, "calibration");
  info.report_json = f.metadata.count("report") ? f.metadata.at("report") : "[]";
  for (auto& [k, v] : f.metadata)
    if (k.rfind("extra.", 0) == 0) info.extra[k.substr(6)] = v;
  return info;
}
}  // namespace

torch::Tensor pack_codes(const torch::Tensor& codes_u8, int bits) {
  FQ_INTERNAL_ASSERT(bits >= 1 && bits <= 8, "bits ", bits);
  auto c = codes_u8.to(torch::kCPU).to(torch::kUInt8).contiguous().view({-1});
  const int64_t n = c.numel();
  auto out = torch::zeros({(n * bits + 7) / 8}, torch::kUInt8);
  const uint8_t* src = c.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint8_t limit = static_cast<uint8_t>((1u << bits) - 1);
  for (int64_t i = 0; i < n; ++i) {
    FQ_INTERNAL_ASSERT(src[i] <= limit, "code ", int(src[i]), " does not fit in ", bits, " bits");
    int64_t bit = i * bits;
    uint32_t v = static_cast<uint32_t>(src[i]) << (bit & 7);
    dst[bit >> 3] |= static_cast<uint8_t>(v & 0xff);
    if ((bit & 7) + bits > 8) dst[(bit >> 3) + 1] |= static_cast<uint8_t>(v >> 8);
  }
  return out;
}

torch::Tensor unpack_codes(const torch::Tensor& packed_u8, int bits, int64_t count) {
  auto p = packed_u8.to(torch::kCPU).contiguous();
  FQ_CHECK(p.scalar_type() == torch::kUInt8 && p.numel() * 8 >= count * bits, IoError,
           "packed codes hold ", p.numel(), " bytes but ", count, " codes of ", bits, " bits need ",
           (count * bits + 7) / 8, "; the file is truncated or corrupt");
  auto out = torch::empty({count}, torch::kUInt8);
  const uint8_t* src = p.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t nbytes = p.numel();
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t i = 0; i < count; ++i) {
    int64_t bit = i * bits;
    uint32_t v = src[bit >> 3];
    if ((bit >> 3) + 1 < nbytes) v |= static_cast<uint32_t>(src[(bit >> 3) + 1]) << 8;
    dst[i] = static_cast<uint8_t>((v >> (bit & 7)) & mask);
  }
  return out;
}

std::string file_hash(const std::string& path) {
  std::vector<fs::path> files;
  FQ_CHECK(fs::exists(path), IoError, "cannot hash \"", path, "\": no such file or directory");
  if (fs::is_directory(path)) {
    for (auto& e : fs::directory_iterator(path))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  uint64_t h = kFnv1aStart;
  std::vector<char> buf(1 << 16);
  for (auto& p : files) {
    std::ifstream f(p, std::ios::binary);
    while (f) {
      f.read(buf.data(), buf.size());
      h = fnv1a(h, buf.data(), static_cast<size_t>(f.gcount()));
    }
  }
  return fmt::format("{:016x}", h);
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// One grid's codes and parameters as tensors "<prefix>.codes/.scale/.zero_point[/.offset]"; returns its json entry.
static json write_qtensor(const std::string& prefix, const QuantizedTensor& q, std::map<std::string, torch::Tensor>& tensors) {
  auto flat = [](const torch::Tensor& t) { return t.to(torch::kCPU).to(torch::kFloat).contiguous(); };
  tensors[prefix + ".codes"] = pack_codes(q.codes, q.spec.bits());
  tensors[prefix + ".scale"] = flat(q.qparams.scale);
  tensors[prefix + ".zero_point"] = flat(q.qparams.zero_point);
  if (q.qparams.offset.defined()) tensors[prefix + ".offset"] = flat(q.qparams.offset);
  return {{"shape", q.shape}, {"grouped_shape", q.codes.sizes().vec()}, {"spec", spec_to_json(q.spec)}};
}

void write_quant_state(ModelAdapter& model, const QuantState& state, bool partial,
                       std::map<std::string, torch::Tensor>& tensors, json& layers, json& acts) {
  layers = json::object();
  for (QuantLayer* l : model.all_layers()) {
    auto it = state.weights.find(l->name);
    if (partial && it == state.weights.end()) continue;
    FQ_CHECK(it != state.weights.end(), InternalError, "layer \"", l->name, "\" has no quantized weight");
    const QuantizedTensor& q = it->second;
    layers[l->name] = write_qtensor(l->name, q, tensors);
    // Multipoint sums: each further point under "<layer>.term<i>", its grid in the layer's "terms" list.
    for (size_t i = 0; i < q.terms.size(); ++i)
      layers[l->name]["terms"].push_back(write_qtensor(l->name + ".term" + std::to_string(i), q.terms[i], tensors));
    if (l->bias.defined()) tensors[l->name + ".bias"] = l->bias.to(torch::kCPU).contiguous();
  }
  for (auto& [key, sc] : state.smooth_scales) tensors["smooth." + key] = sc.to(torch::kCPU).contiguous();
  for (auto& [key, sc] : state.equalization_scales) tensors["cle." + key] = sc.to(torch::kCPU).contiguous();
  acts = json::object();
  for (auto& [key, aq] : state.acts) {
    acts[key] = {{"bits", aq->spec().bits}, {"per_token", aq->spec().per_token}};
    if (aq->spec().format) acts[key]["format"] = aq->spec().format->name();
    if (!aq->spec().per_token) {
      acts[key]["step"] = aq->step();
      acts[key]["zero_point"] = aq->zero_point();
    }
  }
}

int64_t save_qmodel(const std::string& path, ModelAdapter& model, const QuantState& state, const QModelInfo& info) {
  std::map<std::string, torch::Tensor> tensors;
  json layers, acts;
  write_quant_state(model, state, false, tensors, layers, acts);
  std::map<std::string, std::string> meta = {
      {"format", "flexquant.qmodel"},
      {"format_version", std::to_string(kQModelFormatVersion)},
      {"flexquant_version", version()},
      {"build_commit", build_commit()},
      {"arch", info.arch},
      {"source_model", info.source_model},
      {"source_hash", info.source_hash},
      {"recipe", info.recipe_json},
      {"calibration", info.calibration},
      {"report", info.report_json},
      {"layers", layers.dump()},
      {"activations", acts.dump()},
  };
  for (auto& [k, v] : info.extra) meta["extra." + k] = v;
  save_safetensors(path, tensors, meta);
  return static_cast<int64_t>(fs::file_size(path));
}

// Runs fn on a .fqz's metadata and tensors: what nlohmann::json, std::stoi or LibTorch throws on a malformed file
// (a field missing or of the wrong type, bad JSON, codes that do not fit their shape) becomes a ModelError naming it.
template <class F>
auto fqz_fields(const std::string& path, F&& fn) -> decltype(fn()) {
  auto fail = [&](const char* what) {
    return ModelError(detail::concat("\"", path, "\" is not a valid .fqz: ", what,
                                     " -> hint: the file is corrupt or was not written by flexquant"));
  };
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    throw fail(e.what());
  } catch (const c10::Error& e) {
    throw fail(e.what_without_backtrace());
  } catch (const std::logic_error& e) {  // std::stoi's invalid_argument / out_of_range
    throw fail(e.what());
  }
}

QModelInfo read_qmodel_info(const std::string& path) {
  SafeTensorsFile f = load_safetensors(path);
  return fqz_fields(path, [&] { return info_from(f); });
}

// The grid read back from write_qtensor's tensors under `prefix` and its json entry.
static QuantizedTensor read_qtensor(const SafeTensorsFile& f, const json& j, const std::string& prefix,
                                    const std::string& where) {
  QuantizedTensor q;
  q.spec = spec_from_json(j.at("spec"));
  q.shape = j.at("shape").get<std::vector<int64_t>>();
  auto gshape = j.at("grouped_shape").get<std::vector<int64_t>>();
  int64_t count = 1;
  for (auto d : gshape) {
    FQ_CHECK(d >= 0 && (d == 0 || count <= (int64_t{1} << 48) / d), ModelError, where, " has grouped_shape ",
             json(gshape).dump(), " -> each >= 0, at most 2^48 codes");
    count *= d;
  }
  q.codes = unpack_codes(f.at(prefix + ".codes"), q.spec.bits(), count).view(gshape);
  q.qparams.scale = f.at(prefix + ".scale");
  q.qparams.zero_point = f.at(prefix + ".zero_point");
  if (f.contains(prefix + ".offset")) q.qparams.offset = f.at(prefix + ".offset");
  return q;
}

void read_quant_state(const SafeTensorsFile& f, const json& layers, const json& acts, ModelAdapter& model,
                      QuantState& state, bool partial) {
  const std::string path = f.path;
  state = QuantState{};
  // SmoothQuant first: the norms of the FP model get the same division they got at quantization time.
  for (const auto& name : f.names)
    if (name.rfind("smooth.", 0) == 0) state.smooth_scales[name.substr(7)] = f.at(name);
  if (!partial) apply_saved_smoothing(model, state.smooth_scales, "\"" + path + "\"");
  // Then equalization, replayed on the FP model: what the stored weights do not hold (ReLU6 ceilings) follows.
  for (const auto& name : f.names)
    if (name.rfind("cle.", 0) == 0) state.equalization_scales[name.substr(4)] = f.at(name);
  if (!partial) apply_equalization(model, state.equalization_scales, "\"" + path + "\"");
  for (QuantLayer* l : model.all_layers()) {
    if (partial && !layers.contains(l->name)) continue;
    FQ_CHECK(layers.contains(l->name), ModelError, "\"", path, "\" has no entry for layer \"", l->name,
             "\"; it does not match this model");
    const json& lj = layers[l->name];
    const std::string where = "layer \"" + l->name + "\" in \"" + path + "\"";
    QuantizedTensor q = read_qtensor(f, lj, l->name, where);
    FQ_CHECK(q.shape == l->weight.sizes().vec(), ModelError, where, " has shape ", json(q.shape).dump(),
             " but the model's weight is ", json(l->weight.sizes().vec()).dump());
    FQ_CHECK(!lj.contains("terms") || lj["terms"].is_array(), ModelError, where, ": \"terms\" is not a list");
    if (lj.contains("terms"))
      for (size_t i = 0; i < lj["terms"].size(); ++i) {
        q.terms.push_back(read_qtensor(f, lj["terms"][i], l->name + ".term" + std::to_string(i), where));
        FQ_CHECK(q.terms.back().shape == q.shape, ModelError, where, ": multipoint term ", i, " has shape ",
                 json(q.terms.back().shape).dump(), ", the layer ", json(q.shape).dump());
      }
    auto dev = l->weight.device();
    l->weight = q.dequantize().to(dev);
    if (f.contains(l->name + ".bias")) l->bias = f.at(l->name + ".bias").to(dev);
    state.weights[l->name] = std::move(q);
  }
  for (Unit* u : model.units()) {
    for (const ActSite& s : u->act_sites()) {
      std::string key = site_key(*u, s);
      if (!acts.contains(key)) continue;
      const json& aj = acts[key];
      ActQuantSpec as;
      as.bits = aj.at("bits");
      as.per_token = aj.at("per_token");
      if (aj.contains("format")) as.format = Format::parse(aj.at("format").get<std::string>());
      auto q = std::make_shared<ActQuantizer>(as, s.non_negative);
      if (!as.per_token) q->set_grid(aj.at("step").get<float>(), aj.at("zero_point").get<float>());
      state.acts[key] = q;
    }
  }
}

QModelInfo load_qmodel(const std::string& path, ModelAdapter& model, QuantState& state) {
  SafeTensorsFile f = load_safetensors(path);
  return fqz_fields(path, [&] {
    QModelInfo info = info_from(f);
    FQ_CHECK(info.arch == model.arch(), ModelError, "\"", path, "\" was quantized from a ", info.arch,
             " model but the model given is ", model.arch());
    read_quant_state(f, json::parse(meta_or_throw(f, "layers")), json::parse(meta_or_throw(f, "activations")), model,
                     state, false);
    return info;
  });
}

json unit_report_to_json(const UnitReport& u) {
  return {{"unit", u.name}, {"method", u.method}, {"iters", u.iters}, {"loss_start", u.loss_start},
          {"loss_end", u.loss_end}, {"seconds", u.seconds}, {"ms_per_iter", u.ms_per_iter},
          {"peak_rss_bytes", u.peak_rss_bytes}};
}

UnitReport unit_report_from_json(const json& j) {
  UnitReport u;
  u.name = j.at("unit");
  u.method = j.at("method");
  u.iters = j.at("iters");
  u.loss_start = j.at("loss_start");
  u.loss_end = j.at("loss_end");
  u.seconds = j.at("seconds");
  u.ms_per_iter = j.at("ms_per_iter");
  u.peak_rss_bytes = j.at("peak_rss_bytes");
  return u;
}

std::string report_to_json(const QuantizeReport& r) {
  json units = json::array();
  for (auto& u : r.units) units.push_back(unit_report_to_json(u));
  return json{{"units", units}, {"seconds", r.seconds}, {"peak_rss_bytes", r.peak_rss_bytes},
              {"calib_samples", r.calib_samples}}
      .dump();
}

}  // namespace flexquant
