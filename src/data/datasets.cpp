// Dataset readers: CIFAR-10 binary records (https://www.cs.toronto.edu/~kriz/cifar.html, "Binary
// version"), Fashion-MNIST IDX files (Xiao et al. 2017; IDX format of LeCun's MNIST page), the disjoint
// calibration/evaluation split and the CLI dataset spec. Pixels become float32 (x/255 - mean)/std.
#include "flexquant/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant {
namespace fs = std::filesystem;

Normalization Normalization::cifar10() { return {{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}}; }
Normalization Normalization::fashion_mnist() { return {{0.2860}, {0.3530}}; }
Normalization Normalization::identity(int channels) {
  return {std::vector<double>(channels, 0.0), std::vector<double>(channels, 1.0)};
}

namespace {

// u8 [N, C, H, W] -> normalised float32.
torch::Tensor to_float_images(const torch::Tensor& u8, const Normalization& norm) {
  const int64_t c = u8.size(1);
  FQ_CHECK(static_cast<int64_t>(norm.mean.size()) == c && static_cast<int64_t>(norm.std.size()) == c, ConfigError,
           "normalisation has ", norm.mean.size(), " means and ", norm.std.size(), " stds -> images have ", c,
           " channels -> give one mean and one std per channel");
  for (double s : norm.std) FQ_CHECK(s > 0, ConfigError, "normalisation std ", s, " -> must be > 0");
  auto mean = torch::tensor(norm.mean, torch::kFloat32).view({1, c, 1, 1});
  auto stdv = torch::tensor(norm.std, torch::kFloat32).view({1, c, 1, 1});
  return (u8.to(torch::kFloat32).div_(255.0f) - mean).div_(stdv).contiguous();
}

std::vector<char> read_file(const std::string& path) {
  std::error_code ec;
  FQ_CHECK(fs::is_regular_file(path, ec), IoError, "data file not found -> ", path, " -> hint: check the path");
  std::ifstream in(path, std::ios::binary);
  FQ_CHECK(in.good(), IoError, "cannot open data file ", path, " -> ", std::strerror(errno));
  std::vector<char> buf(fs::file_size(path));
  if (!buf.empty()) in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
  FQ_CHECK(in.good() || buf.empty(), IoError, "read error in data file ", path);
  return buf;
}

constexpr int64_t kCifarRecord = 1 + 3 * 32 * 32;

std::vector<std::string> cifar_files_in(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.rfind("cifar10_test_", 0) == 0 && e.path().extension() == ".bin")
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty() && fs::is_regular_file(fs::path(dir) / "test_batch.bin"))
    files.push_back((fs::path(dir) / "test_batch.bin").string());
  FQ_CHECK(!files.empty(), IoError, "no CIFAR-10 record files in directory ", dir,
           " -> looked for cifar10_test_*.bin and test_batch.bin -> hint: pass a file or the directory holding them");
  return files;
}

constexpr size_t kMaxIdxBytes = size_t{256} << 20;  // Fashion-MNIST's largest file: 45 MiB

// Fashion-MNIST: gzread reads gzipped and plain files alike.
std::vector<unsigned char> read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  FQ_CHECK(f, IoError, "cannot open IDX file ", path, " -> ", std::strerror(errno));
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) {
    out.insert(out.end(), buf, buf + n);
    if (out.size() > kMaxIdxBytes) {  // a few KB of gzip can expand to gigabytes
      gzclose(f);
      throw IoError(detail::concat("IDX file ", path, " decompresses to more than ", kMaxIdxBytes >> 20,
                                   " MiB -> Fashion-MNIST's largest file holds 45 MiB -> hint: corrupt or not IDX"));
    }
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string emsg = msg ? msg : "";
  gzclose(f);
  FQ_CHECK(n == 0 && (err == Z_OK || err == Z_STREAM_END), IoError, "corrupt or truncated gzip data in ", path,
           " -> ", emsg, " -> hint: re-fetch the file");
  return out;
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// Returns the payload of an IDX file of unsigned bytes with `ndims` dimensions; `dims` receives them.
std::vector<unsigned char> read_idx(const std::string& path, int ndims, std::vector<int64_t>& dims) {
  std::vector<unsigned char> raw = read_gz(path);
  const size_t head = 4 + 4 * static_cast<size_t>(ndims);
  FQ_CHECK(raw.size() >= head, IoError, "truncated IDX file ", path, " -> ", raw.size(), " bytes -> the header alone needs ",
           head);
  const uint32_t magic = be32(raw.data());
  const uint32_t want = 0x0800u | static_cast<uint32_t>(ndims);  // 0x08 = unsigned byte
  FQ_CHECK(magic == want, IoError, "bad IDX magic in ", path, " -> 0x", std::hex, magic, " -> expected 0x", want, std::dec,
           " (unsigned bytes, ", ndims, " dimensions) -> hint: images and labels swapped?");
  dims.clear();
  size_t count = 1;
  for (int i = 0; i < ndims; ++i) {
    dims.push_back(be32(raw.data() + 4 + 4 * i));
    // saturates instead of wrapping, so a header whose product overflows cannot match the data size
    count = std::min<size_t>(count, 2 * kMaxIdxBytes) * static_cast<size_t>(dims.back());
  }
  FQ_CHECK(raw.size() - head == count, IoError, (raw.size() - head < count ? "truncated" : "oversized"), " IDX file ",
           path, " -> ", raw.size() - head, " data bytes -> the header's dimensions need ", count);
  return std::vector<unsigned char>(raw.begin() + static_cast<long>(head), raw.end());
}

std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const char* ext : {".gz", ""}) {
    fs::path p = fs::path(dir) / (stem + ext);
    if (fs::is_regular_file(p)) return p.string();
  }
  throw IoError(detail::concat("Fashion-MNIST file ", stem, "[.gz] not found in ", dir,
                               " -> hint: the Debian package dataset-fashion-mnist installs them in "
                               "/usr/share/datasets/fashion-mnist"));
}

}  // namespace

ImageDataset ImageDataset::slice(int64_t begin, int64_t end) const {
  FQ_CHECK(0 <= begin && begin <= end && end <= size(), ConfigError, "record range [", begin, ", ", end,
           ") -> outside the dataset's ", size(), " records");
  ImageDataset out = *this;
  out.images = images.slice(0, begin, end);
  out.labels = labels.slice(0, begin, end);
  out.first_record = first_record + begin;
  return out;
}

ImageDataset load_cifar10(const std::vector<std::string>& files, const Normalization& norm) {
  FQ_CHECK(!files.empty(), ConfigError, "no CIFAR-10 files given -> need at least one record file");
  std::vector<torch::Tensor> parts;
  std::string source;
  for (const auto& f : files) {
    std::vector<char> buf = read_file(f);
    const int64_t n = static_cast<int64_t>(buf.size()) / kCifarRecord;
    FQ_CHECK(static_cast<int64_t>(buf.size()) % kCifarRecord == 0 && n > 0, IoError, "CIFAR-10 file ", f,
             " has the wrong size -> ", buf.size(), " bytes -> must be a positive multiple of ", kCifarRecord,
             " (1 label byte + 3072 pixel bytes per record) -> hint: truncated or not CIFAR-10 binary");
    auto t = torch::empty({n, kCifarRecord}, torch::kUInt8);
    std::memcpy(t.data_ptr(), buf.data(), buf.size());
    auto lab = t.select(1, 0);
    const int64_t max_label = lab.max().item<uint8_t>();
    if (max_label > 9) {
      const int64_t at = (lab > 9).nonzero()[0][0].item<int64_t>();
      throw IoError(detail::concat("CIFAR-10 file ", f, " record ", at, " has label ", int(lab[at].item<uint8_t>()),
                                   " -> labels must be 0..9 -> hint: corrupt file, or CIFAR-100 (2 label bytes)"));
    }
    parts.push_back(t);
    source += (source.empty() ? "" : ", ") + f;
  }
  auto all = torch::cat(parts, 0);
  ImageDataset d;
  d.name = "cifar10";
  d.source = source;
  d.labels = all.select(1, 0).to(torch::kInt64).contiguous();
  d.images = to_float_images(all.slice(1, 1).reshape({-1, 3, 32, 32}), norm);
  return d;
}

ImageDataset load_cifar10(const std::string& dir_or_file, const Normalization& norm) {
  std::error_code ec;
  FQ_CHECK(fs::exists(dir_or_file, ec), IoError, "CIFAR-10 path not found -> ", dir_or_file,
           " -> give a directory with cifar10_test_*.bin / test_batch.bin or a record file");
  if (fs::is_directory(dir_or_file, ec)) {
    auto d = load_cifar10(cifar_files_in(dir_or_file), norm);
    d.source = dir_or_file;
    return d;
  }
  return load_cifar10(std::vector<std::string>{dir_or_file}, norm);
}

ImageDataset load_fashion_mnist(const std::string& dir, const std::string& split, const Normalization& norm) {
  FQ_CHECK(split == "test" || split == "train", ConfigError, "Fashion-MNIST split \"", split,
           "\" -> allowed: test, train");
  std::error_code ec;
  FQ_CHECK(fs::is_directory(dir, ec), IoError, "Fashion-MNIST directory not found -> ", dir,
           " -> hint: /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist)");
  const std::string prefix = split == "test" ? "t10k" : "train";
  const std::string img_path = find_idx(dir, prefix + "-images-idx3-ubyte");
  const std::string lab_path = find_idx(dir, prefix + "-labels-idx1-ubyte");
  std::vector<int64_t> idims, ldims;
  auto img = read_idx(img_path, 3, idims);
  auto lab = read_idx(lab_path, 1, ldims);
  FQ_CHECK(idims[1] == 28 && idims[2] == 28, IoError, "Fashion-MNIST images in ", img_path, " are ", idims[1], "x",
           idims[2], " -> expected 28x28");
  FQ_CHECK(idims[0] == ldims[0], IoError, "Fashion-MNIST image/label count mismatch -> ", idims[0], " images in ",
           img_path, ", ", ldims[0], " labels in ", lab_path, " -> they must match");
  ImageDataset d;
  d.name = "fashion-mnist";
  d.source = img_path + ", " + lab_path;
  auto lt = torch::from_blob(lab.data(), {ldims[0]}, torch::kUInt8).to(torch::kInt64);
  FQ_CHECK(ldims[0] == 0 || lt.max().item<int64_t>() <= 9, IoError, "Fashion-MNIST labels in ", lab_path,
           " -> maximum ", lt.max().item<int64_t>(), " -> labels must be 0..9");
  d.labels = lt;
  d.images = to_float_images(torch::from_blob(img.data(), {idims[0], 1, 28, 28}, torch::kUInt8), norm);
  return d;
}

DatasetSplit split_calibration(const ImageDataset& data, int64_t calibration_count) {
  const int64_t n = data.size();
  FQ_CHECK(calibration_count >= 1 && calibration_count < n, ConfigError, "calibration count ", calibration_count,
           " -> must be in 1..", n - 1, " for a dataset of ", n,
           " records (the rest is the evaluation set) -> hint: lower --calib");
  DatasetSplit s;
  s.calibration = data.slice(0, calibration_count);
  s.evaluation = data.slice(calibration_count, n);
  const int64_t b = data.first_record;
  s.description = detail::concat("calibration: records ", b, "-", b + calibration_count - 1, " (", calibration_count,
                                 "), evaluation: records ", b + calibration_count, "-", b + n - 1, " (",
                                 n - calibration_count, ")");
  return s;
}

std::vector<std::string> dataset_schemes() { return {"cifar10", "fashion-mnist", "images", "npy"}; }

DatasetSpec parse_dataset_spec(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string scheme = colon == std::string::npos ? "" : spec.substr(0, colon);
  const auto schemes = dataset_schemes();
  const bool known = std::find(schemes.begin(), schemes.end(), scheme) != schemes.end();
  FQ_CHECK(known, ConfigError, "dataset spec \"", spec, "\" -> unknown scheme \"", scheme,
           "\" -> valid: cifar10:<dir>, fashion-mnist:<dir>, images:<dir with one folder per class>, "
           "npy:<images.npy>[,<labels.npy|.txt>] -> hint: e.g. cifar10:../shared/data/cifar10");
  DatasetSpec d{scheme, spec.substr(colon + 1)};
  FQ_CHECK(!d.path.empty(), ConfigError, "dataset spec \"", spec, "\" has no path -> write ", scheme, ":<path>");
  return d;
}

namespace {
// npy:<images>[,<labels>]: labels default to labels.npy / labels.txt beside the images.
std::pair<std::string, std::string> npy_paths(const std::string& path) {
  const auto comma = path.find(',');
  if (comma != std::string::npos) return {path.substr(0, comma), path.substr(comma + 1)};
  const fs::path dir = fs::path(path).parent_path();
  for (const char* name : {"labels.npy", "labels.txt"})
    if (fs::exists(dir / name)) return {path, (dir / name).string()};
  throw ConfigError("npy:" + path + " has no labels: neither labels.npy nor labels.txt is beside it -> write "
                    "npy:<images.npy>,<labels.npy or .txt>");
}
}  // namespace

ImageDataset load_dataset(const std::string& spec, const ImagePreprocess& p) {
  const DatasetSpec d = parse_dataset_spec(spec);
  const bool fixed_size = d.scheme == "cifar10" || d.scheme == "fashion-mnist";
  FQ_CHECK(!fixed_size || (p.resize == 0 && p.crop == 0 && p.scale == 1.0 / 255 && p.channel_order == "rgb"), ConfigError,
           d.scheme, " takes only --mean/--std; resize, crop, scale and channel order are for images: and npy: data");
  Stopwatch sw;
  ImageDataset out;
  if (d.scheme == "cifar10") out = load_cifar10(d.path, p.norm.value_or(Normalization::cifar10()));
  else if (d.scheme == "fashion-mnist") out = load_fashion_mnist(d.path, "test", p.norm.value_or(Normalization::fashion_mnist()));
  else if (d.scheme == "images") out = load_image_folder(d.path, p);
  else {
    auto [images, labels] = npy_paths(d.path);
    out = load_npy_images(images, labels, p);
  }
  log_debug(detail::concat("loaded ", out.name, " (", out.size(), " images) from ", out.source, " in ",
                           format_duration(sw.seconds())));
  return out;
}

}  // namespace flexquant
