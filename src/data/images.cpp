// Data for any image model: image folders (stb_image from Debian libstb-dev) and NumPy .npy arrays, with the
// preprocessing users give their own models (include/flexquant/datasets.h).
#include <torch/nn/functional/upsampling.h>
#include <torch/torch.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "flexquant/datasets.h"
#include "flexquant/error.h"

namespace flexquant {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kMaxDatasetBytes = int64_t{8} << 30;  // float32 images held in memory
constexpr int64_t kMaxImagePixels = int64_t{1} << 24;   // per image
// Huffman-coded JPEG (stb reads no arithmetic coding) spends at least one bit per 8x8 block on its DC coefficient:
// at most 64 pixels per bit, 512 per byte (a flat grayscale image). stb decodes a truncated file's missing blocks
// anyway: a 990-byte file claiming 32 x 65302 pixels took seconds (fuzz_image, a timeout).
constexpr int64_t kMaxJpegPixelsPerByte = 1024;

Normalization default_norm(int64_t channels) {
  return channels == 3 ? Normalization::cifar10() : Normalization{std::vector<double>(channels, 0.5), std::vector<double>(channels, 0.5)};
}

// [C, H, W] float pixels (0..255) -> resized, cropped, reordered, normalised.
torch::Tensor preprocess(torch::Tensor x, const ImagePreprocess& p, const std::string& what) {
  namespace F = torch::nn::functional;
  if (p.resize > 0) {
    const int64_t h = x.size(1), w = x.size(2), s = std::min(h, w);
    const std::vector<int64_t> size{std::max<int64_t>(1, h * p.resize / s), std::max<int64_t>(1, w * p.resize / s)};
    x = F::interpolate(x.unsqueeze(0), F::InterpolateFuncOptions().size(size).mode(torch::kBilinear)
                                           .align_corners(false).antialias(true)).squeeze(0);
  }
  if (p.crop > 0) {
    FQ_CHECK(x.size(1) >= p.crop && x.size(2) >= p.crop, ConfigError, what, " is ", x.size(1), "x", x.size(2),
             " after resizing, smaller than --crop ", p.crop, " -> lower --crop or raise --resize");
    const int64_t top = (x.size(1) - p.crop) / 2, left = (x.size(2) - p.crop) / 2;
    x = x.slice(1, top, top + p.crop).slice(2, left, left + p.crop);
  }
  FQ_CHECK(p.channel_order == "rgb" || p.channel_order == "bgr", ConfigError, "--channel-order ", p.channel_order,
           " -> allowed: rgb, bgr");
  if (p.channel_order == "bgr" && x.size(0) == 3) x = x.flip(0);
  const Normalization n = p.norm.value_or(default_norm(x.size(0)));
  FQ_CHECK(static_cast<int64_t>(n.mean.size()) == x.size(0) && n.std.size() == n.mean.size(), ConfigError,
           "--mean/--std give ", n.mean.size(), " and ", n.std.size(), " values for images of ", x.size(0),
           " channels -> give one per channel");
  for (double s : n.std) FQ_CHECK(s > 0, ConfigError, "--std ", s, " -> must be > 0");
  auto mean = torch::tensor(n.mean, torch::kFloat).view({-1, 1, 1});
  auto stdv = torch::tensor(n.std, torch::kFloat).view({-1, 1, 1});
  FQ_CHECK(p.scale > 0 && std::isfinite(p.scale), ConfigError, "--pixel-scale ", p.scale, " -> must be > 0");
  // x / (1/scale), the divisor rounded when integral: x / 255 exactly as the CIFAR-10 loader computes it.
  const double inv = 1.0 / p.scale, divisor = std::abs(inv - std::round(inv)) < 1e-9 ? std::round(inv) : inv;
  return ((x / static_cast<float>(divisor) - mean) / stdv).contiguous();
}

torch::Tensor stack_checked(const std::vector<torch::Tensor>& xs, const std::vector<std::string>& names) {
  for (size_t i = 1; i < xs.size(); ++i)
    FQ_CHECK(xs[i].sizes() == xs[0].sizes(), ConfigError, "\"", names[i], "\" gives an input of shape ", xs[i].sizes(),
             " but \"", names[0], "\" gives ", xs[0].sizes(), " -> pass --resize and --crop so every image has one size");
  return torch::stack(xs);
}

bool is_image_file(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp";
}

// stb_image 2.27 (Debian's libstb-dev) builds each JPEG Huffman table into a 257-byte array without checking the
// table's code count (DHT: 16 counts of up to 255 each), so a crafted JPEG writes past it into the decoder's state
// (found by fuzz/fuzz_image.cpp; upstream checks it since). The DHT segments are checked here before stb reads the
// file: every marker stb would process is found the same way (length-delimited segments, and a byte scan for
// markers inside entropy-coded data), and each table it would build is walked as it walks it.
bool jpeg_huffman_tables_fit(const std::string& b) {
  auto u8 = [&](size_t i) { return i < b.size() ? static_cast<unsigned char>(b[i]) : 0u; };
  for (size_t i = 2; i + 1 < b.size();) {
    if (u8(i) != 0xFF || u8(i + 1) == 0xFF) {  // data, or fill bytes before a marker
      ++i;
      continue;
    }
    const unsigned m = u8(i + 1);
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // stuffed 0xFF, TEM, RSTn, SOI: no length
      i += 2;
      continue;
    }
    if (m == 0xD9) break;  // EOI
    const size_t len = (u8(i + 2) << 8) | u8(i + 3);
    if (m == 0xC4) {  // DHT: tables while the segment has bytes left, as stbi__process_marker reads them
      int64_t left = static_cast<int64_t>(len) - 2;
      for (size_t p = i + 4; left > 0 && p < b.size();) {
        int64_t n = 0;
        for (size_t k = 1; k <= 16; ++k) n += u8(p + k);
        if (n > 256) return false;
        p += 17 + static_cast<size_t>(n);
        left -= 17 + n;
      }
    }
    i += 2 + std::max<size_t>(len, 2);
  }
  return true;
}

// An uncompressed BMP (BITMAPINFOHEADER or later, BI_RGB / BI_BITFIELDS) stores every row; stb fills the rows a
// file lacks with zeros, so a 983-byte file decoded to 65311x32 pixels (fuzz_image: a timeout). Its rows must fit.
bool bmp_pixels_fit(const std::string& b, int64_t w, int64_t h) {
  auto u32 = [&](size_t i) { uint32_t v = 0; std::memcpy(&v, b.data() + i, 4); return v; };
  if (b.size() < 54 || u32(14) < 40 || (u32(30) != 0 && u32(30) != 3)) return true;  // other kinds: left to stb
  const int64_t bpp = static_cast<unsigned char>(b[28]) | (static_cast<unsigned char>(b[29]) << 8);
  const int64_t row = (w * bpp + 31) / 32 * 4;  // rows are padded to 4 bytes; w, h <= 2^24 here
  return int64_t{u32(10)} + row * h <= static_cast<int64_t>(b.size());
}

// stb_image 2.27 grows its IDAT buffer to the length a PNG chunk header claims before reading it, so a 1 KB file
// asked for 1.4 GB (fuzz_image). Every chunk, walked as stb walks them, must fit in the file.
bool png_chunks_fit(const std::string& b) {
  auto be32 = [&](size_t i) {
    const auto* p = reinterpret_cast<const unsigned char*>(b.data()) + i;
    return (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | p[3];
  };
  for (size_t i = 8; i + 8 <= b.size();) {  // after the signature: length, type, data, CRC
    const uint64_t len = be32(i);
    if (len > b.size() - i - 8) return false;
    if (b.compare(i + 4, 4, "IEND") == 0) break;
    i += 12 + len;
  }
  return true;
}

torch::Tensor decode_image(const std::string& path, int channels) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FQ_CHECK(in.good() || in.eof(), IoError, "cannot read image \"", path, "\"");
  FQ_CHECK(bytes.size() <= (size_t{1} << 30), IoError, "image \"", path, "\" has ", bytes.size(),
           " bytes -> at most 1 GiB per image");
  FQ_CHECK(bytes.rfind("\xFF\xD8", 0) != 0 || jpeg_huffman_tables_fit(bytes), IoError, "cannot decode image \"",
           path, "\": a JPEG Huffman table holds more than 256 codes -> the file is corrupt");
  FQ_CHECK(bytes.rfind("\x89PNG", 0) != 0 || png_chunks_fit(bytes), IoError, "PNG \"", path,
           "\" has a chunk longer than the rest of the file -> the file is truncated or corrupt");
  int w = 0, h = 0, c = 0;
  // A header can claim any size, and stb allocates it before it finds the data missing (a BMP even decodes the
  // missing pixels as zeros): 16 megapixels at most (192 MiB as float32), and an uncompressed BMP must hold them.
  if (stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &w, &h, &c)) {
    FQ_CHECK(int64_t{w} * h <= kMaxImagePixels, IoError, "image \"", path, "\" is ", w, "x", h,
             " pixels -> at most 16 megapixels; hint: downscale it, the model resizes it to its input size anyway");
    FQ_CHECK(bytes.rfind("BM", 0) != 0 || bmp_pixels_fit(bytes, w, h), IoError, "BMP \"", path, "\" is ", w, "x", h,
             " pixels but holds only ", bytes.size(), " bytes -> the file is truncated or corrupt");
    FQ_CHECK(bytes.rfind("\xFF\xD8", 0) != 0 || int64_t{w} * h <= kMaxJpegPixelsPerByte * int64_t(bytes.size()),
             IoError, "JPEG \"", path, "\" claims ", w, "x", h, " pixels in ", bytes.size(), " bytes, more than ",
             kMaxJpegPixelsPerByte, " pixels per byte that any JPEG stb decodes can reach -> the file is truncated or "
             "corrupt");
  }
  stbi_uc* px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()),
                                      &w, &h, &c, channels);
  FQ_CHECK(px != nullptr, IoError, "cannot decode image \"", path, "\": ", stbi_failure_reason(),
           " -> supported: PNG, JPEG, BMP");
  if (w <= 0 || h <= 0) stbi_image_free(px);  // stb decodes a BMP of height 0 (fuzz_image): resizing divided by it
  FQ_CHECK(w > 0 && h > 0, IoError, "image \"", path, "\" is ", w, "x", h, " pixels -> an image needs at least one");
  torch::Tensor t = torch::from_blob(px, {h, w, channels}, torch::kUInt8).permute({2, 0, 1}).to(torch::kFloat);
  stbi_image_free(px);
  return t;
}

std::vector<std::string> read_npy_header(std::ifstream& in, const std::string& path, int64_t file_size, int64_t& data_at) {
  char magic[8];
  in.read(magic, 8);
  FQ_CHECK(in.gcount() == 8 && std::memcmp(magic, "\x93NUMPY", 6) == 0, IoError, "\"", path,
           "\" is not a NumPy .npy file (bad magic) -> save arrays with numpy.save");
  const int major = static_cast<unsigned char>(magic[6]);
  FQ_CHECK(major >= 1 && major <= 3, IoError, "\"", path, "\": .npy format version ", major, " -> supported 1-3");
  uint32_t len = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(b), major == 1 ? 2 : 4);
  len = b[0] | (b[1] << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24);
  data_at = (major == 1 ? 10 : 12) + static_cast<int64_t>(len);
  FQ_CHECK(in.good() && data_at <= file_size && len <= (1u << 20), IoError, "\"", path, "\": .npy header of ", len,
           " bytes does not fit the file (", file_size, " bytes): truncated or corrupt");
  std::string h(len, '\0');
  in.read(h.data(), len);
  std::smatch m;
  static const std::regex descr("'descr'\\s*:\\s*'([<>|=])([fiu])(\\d)'"), order("'fortran_order'\\s*:\\s*(True|False)"),
      shape("'shape'\\s*:\\s*\\(([^)]*)\\)");  // built once: compiling a std::regex costs more than reading a header
  FQ_CHECK(std::regex_search(h, m, descr), IoError, "\"", path, "\": .npy header has no readable 'descr': ", h);
  std::vector<std::string> out{m[1], m[2], m[3]};
  FQ_CHECK(std::regex_search(h, m, order) && m[1] == "False", IoError, "\"", path,
           "\" is in Fortran order -> save it C-contiguous (numpy.ascontiguousarray)");
  FQ_CHECK(std::regex_search(h, m, shape), IoError, "\"", path, "\": .npy header has no readable 'shape': ", h);
  out.push_back(m[1]);
  return out;
}

}  // namespace

torch::Tensor load_npy(const std::string& path) {
  FQ_CHECK(fs::is_regular_file(path), IoError, ".npy file \"", path, "\" does not exist");
  std::ifstream in(path, std::ios::binary);
  const int64_t size = static_cast<int64_t>(fs::file_size(path));
  int64_t data_at = 0;
  auto h = read_npy_header(in, path, size, data_at);
  const std::string &endian = h[0], &kind = h[1];
  const int bytes = std::stoi(h[2]);
  FQ_CHECK(endian != ">" || bytes == 1, IoError, "\"", path, "\" is big-endian -> save it little-endian");
  torch::ScalarType t;
  if (kind == "f" && bytes == 4) t = torch::kFloat;
  else if (kind == "f" && bytes == 8) t = torch::kDouble;
  else if (kind == "u" && bytes == 1) t = torch::kUInt8;
  else if (kind == "i" && bytes == 1) t = torch::kInt8;
  else if (kind == "i" && bytes == 4) t = torch::kInt;
  else if (kind == "i" && bytes == 8) t = torch::kLong;
  else throw IoError("\"" + path + "\": dtype " + kind + h[2] + " -> supported: float32/64, uint8, int8, int32, int64");
  std::vector<int64_t> dims;
  int64_t count = 1;
  std::stringstream ss(h[3]);
  for (std::string tok; std::getline(ss, tok, ',');) {
    if (tok.find_first_not_of(" ") == std::string::npos) continue;
    int64_t d = -1;
    size_t used = 0;
    try {
      d = std::stoll(tok, &used);
    } catch (const std::exception&) {  // not a number, or beyond int64
    }
    FQ_CHECK(used > 0 && tok.find_first_not_of(" L", used) == std::string::npos, IoError, "\"", path,
             "\": .npy shape (", h[3], ") holds \"", tok, "\", not a dimension -> the file is corrupt");
    FQ_CHECK(d >= 0 && (d == 0 || count <= (int64_t{1} << 40) / std::max<int64_t>(d, 1)), IoError, "\"", path,
             "\": shape (", h[3], ") is out of range");
    dims.push_back(d);
    count *= d;
  }
  FQ_CHECK(data_at + count * bytes == size, IoError, "\"", path, "\": shape (", h[3], ") of ", bytes, "-byte values needs ",
           count * bytes, " data bytes but the file holds ", size - data_at, ": truncated or corrupt");
  torch::Tensor out = torch::empty(dims, t);
  in.seekg(data_at);
  in.read(static_cast<char*>(out.data_ptr()), count * bytes);
  FQ_CHECK(in.good() || count == 0, IoError, "read error in \"", path, "\"");
  return out;
}

ImageDataset load_image_folder(const std::string& dir, const ImagePreprocess& p) {
  FQ_CHECK(fs::is_directory(dir), IoError, "image folder \"", dir, "\" does not exist -> pass images:<dir> with one "
           "subfolder per class");
  std::vector<fs::path> classes;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) classes.push_back(e.path());
  std::sort(classes.begin(), classes.end());
  FQ_CHECK(!classes.empty(), IoError, "image folder \"", dir, "\" has no class subfolders -> put each class's images "
           "in <dir>/<class name>/");
  std::vector<std::vector<fs::path>> files(classes.size());
  for (size_t c = 0; c < classes.size(); ++c) {
    for (const auto& e : fs::directory_iterator(classes[c]))
      if (e.is_regular_file() && is_image_file(e.path())) files[c].push_back(e.path());
    std::sort(files[c].begin(), files[c].end());
  }
  const int channels = p.norm && p.norm->mean.size() == 1 ? 1 : 3;
  std::vector<torch::Tensor> xs;
  std::vector<std::string> names;
  std::vector<int64_t> labels;
  for (size_t i = 0;; ++i) {  // interleave the classes
    bool any = false;
    for (size_t c = 0; c < classes.size(); ++c) {
      if (i >= files[c].size()) continue;
      any = true;
      names.push_back(files[c][i].string());
      xs.push_back(preprocess(decode_image(names.back(), channels), p, "\"" + names.back() + "\""));
      labels.push_back(static_cast<int64_t>(c));
      FQ_CHECK(static_cast<int64_t>(xs.size()) * xs[0].numel() * 4 <= kMaxDatasetBytes, ConfigError, "image folder \"",
               dir, "\" needs more than 8 GiB as float tensors -> use a smaller folder or --resize/--crop");
    }
    if (!any) break;
  }
  FQ_CHECK(!xs.empty(), IoError, "image folder \"", dir, "\" holds no PNG/JPEG/BMP images");
  ImageDataset d;
  d.name = "images";
  d.source = dir;
  d.images = stack_checked(xs, names);
  d.labels = torch::tensor(labels, torch::kLong);
  d.num_classes = static_cast<int64_t>(classes.size());
  return d;
}

ImageDataset load_npy_images(const std::string& images, const std::string& labels, const ImagePreprocess& p) {
  torch::Tensor x = load_npy(images);
  FQ_CHECK(x.dim() == 4, IoError, "\"", images, "\" has shape ", x.sizes(), " -> images must be [N, C, H, W] (float) or "
           "[N, H, W, C] (uint8)");
  if (x.is_floating_point()) {
    FQ_CHECK(p.is_default(), ConfigError, "\"", images, "\" holds float images, used as they are; preprocessing flags "
             "apply to uint8 pixels -> drop them, or save uint8 pixels");
    x = x.to(torch::kFloat).contiguous();
  } else {
    FQ_CHECK(x.scalar_type() == torch::kUInt8, IoError, "\"", images, "\" holds ", x.scalar_type(),
             " values -> images are float32 (preprocessed) or uint8 pixels");
    if (x.size(3) <= 4 && x.size(1) > 4) x = x.permute({0, 3, 1, 2});  // NHWC
    std::vector<torch::Tensor> xs;
    for (int64_t i = 0; i < x.size(0); ++i)
      xs.push_back(preprocess(x[i].to(torch::kFloat), p, "\"" + images + "\" image " + std::to_string(i)));
    x = torch::stack(xs);
  }
  torch::Tensor y;
  if (fs::path(labels).extension() == ".npy") {
    y = load_npy(labels);
    FQ_CHECK(!y.is_floating_point() && y.dim() == 1, IoError, "\"", labels, "\" has shape ", y.sizes(), " of ",
             y.scalar_type(), " -> labels are a 1-D integer array");
    y = y.to(torch::kLong);
  } else {
    std::ifstream in(labels);
    FQ_CHECK(in.good(), IoError, "labels file \"", labels, "\" does not exist");
    std::vector<int64_t> v;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        v.push_back(std::stoll(line));
      } catch (const std::exception&) {
        throw IoError("\"" + labels + "\" line " + std::to_string(n) + " is \"" + line + "\", not an integer label");
      }
    }
    y = torch::tensor(v, torch::kLong);
  }
  FQ_CHECK(y.size(0) == x.size(0), IoError, "\"", labels, "\" holds ", y.size(0), " labels for ", x.size(0),
           " images in \"", images, "\"");
  FQ_CHECK(y.numel() == 0 || y.min().item<int64_t>() >= 0, IoError, "\"", labels, "\" holds a negative label");
  ImageDataset d;
  d.name = "npy";
  d.source = images + ", " + labels;
  d.images = x;
  d.labels = y;
  d.num_classes = y.numel() ? y.max().item<int64_t>() + 1 : 0;
  return d;
}

}  // namespace flexquant
