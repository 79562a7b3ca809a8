// Dataset readers on the real files: the CIFAR-10 test set of ../shared (label counts, index file,
// normalisation), Fashion-MNIST from the Debian package, the split report, the spec parser, and the
// error cases (wrong sizes, truncation, bad labels, unknown scheme).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;

using flexquant::testing::expect_error;

namespace {

const char* kFashionDir = "/usr/share/datasets/fashion-mnist";

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("fq_data_test_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string cifar_dir() {
  return fs::path(flexquant::testing::shared_path("data/cifar10/cifar10_test_00.bin")).parent_path().string();
}


}  // namespace

TEST(Cifar10, RealTestSet) {
  const ImageDataset d = load_cifar10(cifar_dir());
  ASSERT_EQ(d.size(), 10000);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{10000, 3, 32, 32}));
  EXPECT_EQ(d.images.scalar_type(), torch::kFloat32);
  EXPECT_EQ(d.labels.scalar_type(), torch::kInt64);
  auto counts = torch::bincount(d.labels, {}, 10);
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c].item<int64_t>(), 1000) << "class " << c;

  // Every record's label matches the index file (record -> label -> source image).
  std::ifstream tsv(flexquant::testing::shared_path("data/cifar10/cifar10_test_index.tsv"));
  std::string line;
  std::getline(tsv, line);  // header
  int64_t rows = 0, mismatches = 0;
  while (std::getline(tsv, line)) {
    std::istringstream is(line);
    int64_t rec, lab;
    is >> rec >> lab;
    ASSERT_LT(rec, 10000);
    mismatches += d.labels[rec].item<int64_t>() != lab;
    ++rows;
  }
  EXPECT_EQ(rows, 10000);
  EXPECT_EQ(mismatches, 0);

  // Normalisation: undo it and recover the raw bytes of record 0 (its first pixel, each channel).
  std::ifstream raw(cifar_dir() + "/cifar10_test_00.bin", std::ios::binary);
  std::vector<unsigned char> rec0(3073);
  raw.read(reinterpret_cast<char*>(rec0.data()), 3073);
  EXPECT_EQ(d.labels[0].item<int64_t>(), rec0[0]);
  const double mean[3] = {0.485, 0.456, 0.406}, stdv[3] = {0.229, 0.224, 0.225};
  for (int c = 0; c < 3; ++c)
    for (int px : {0, 33, 1023}) {
      const double v = d.images[0][c][px / 32][px % 32].item<double>() * stdv[c] + mean[c];
      EXPECT_NEAR(v * 255.0, rec0[1 + c * 1024 + px], 1e-3) << "channel " << c << " pixel " << px;
    }
}

TEST(Cifar10, FileListAndSingleFile) {
  const std::string dir = cifar_dir();
  auto one = load_cifar10(dir + "/cifar10_test_03.bin");
  EXPECT_EQ(one.size(), 1000);
  auto two = load_cifar10(std::vector<std::string>{dir + "/cifar10_test_01.bin", dir + "/cifar10_test_00.bin"});
  ASSERT_EQ(two.size(), 2000);
  auto zero = load_cifar10(dir + "/cifar10_test_00.bin");
  EXPECT_TRUE(torch::equal(two.images.slice(0, 1000), zero.images));
  EXPECT_TRUE(torch::equal(two.labels.slice(0, 1000), zero.labels));
}

TEST(Cifar10, Errors) {
  expect_error<IoError>([] { load_cifar10("/nonexistent/cifar"); }, {"not found", "/nonexistent/cifar"});
  const fs::path empty = temp_dir() / "empty_dir";
  fs::create_directories(empty);
  expect_error<IoError>([&] { load_cifar10(empty.string()); }, {"no CIFAR-10 record files", "test_batch.bin"});
  // Truncated: one record plus 100 bytes.
  const fs::path trunc = temp_dir() / "trunc.bin";
  {
    std::ofstream o(trunc, std::ios::binary);
    o << std::string(3073 + 100, '\x01');
  }
  expect_error<IoError>([&] { load_cifar10(trunc.string()); }, {"wrong size", "3173 bytes", trunc.string()});
  const fs::path bad = temp_dir() / "badlabel.bin";
  {
    std::ofstream o(bad, std::ios::binary);
    std::string r(2 * 3073, '\0');
    r[3073] = 12;  // record 1's label
    o << r;
  }
  expect_error<IoError>([&] { load_cifar10(bad.string()); }, {"record 1", "label 12", bad.string()});
}

TEST(Cifar10, SplitIsDisjointAndReported) {
  const ImageDataset d = load_cifar10(cifar_dir());
  const DatasetSplit s = split_calibration(d);
  EXPECT_EQ(s.description, "calibration: records 0-1023 (1024), evaluation: records 1024-9999 (8976)");
  EXPECT_EQ(s.calibration.size(), 1024);
  EXPECT_EQ(s.evaluation.size(), 8976);
  EXPECT_EQ(s.evaluation.first_record, 1024);
  EXPECT_TRUE(torch::equal(s.evaluation.images[0], d.images[1024]));
  EXPECT_TRUE(torch::equal(s.calibration.images[1023], d.images[1023]));
  const DatasetSplit s2 = split_calibration(d, 256);
  EXPECT_EQ(s2.description, "calibration: records 0-255 (256), evaluation: records 256-9999 (9744)");
  expect_error<ConfigError>([&] { split_calibration(d, 10000); }, {"calibration count 10000", "1..9999"});
  expect_error<ConfigError>([&] { split_calibration(d, 0); }, {"calibration count 0"});
}

TEST(FashionMnist, RealTestSet) {
  const ImageDataset d = load_fashion_mnist(kFashionDir);
  ASSERT_EQ(d.size(), 10000);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  auto counts = torch::bincount(d.labels, {}, 10);
  EXPECT_EQ(counts.numel(), 10);
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c].item<int64_t>(), 1000) << "class " << c;
  // Pixels (undoing the normalisation) are in [0, 255] and not all equal.
  auto px = d.images * 0.3530 + 0.2860;
  EXPECT_GE(px.min().item<double>(), -1e-6);
  EXPECT_LE(px.max().item<double>(), 1.0 + 1e-6);
  EXPECT_GT(px.std().item<double>(), 0.1);
  auto via_spec = load_dataset(std::string("fashion-mnist:") + kFashionDir);
  EXPECT_TRUE(torch::equal(via_spec.labels, d.labels));
  expect_error<ConfigError>([] { load_fashion_mnist(kFashionDir, "validation"); }, {"validation", "test, train"});
}

TEST(FashionMnist, Errors) {
  const fs::path dir = temp_dir() / "fmnist";
  fs::create_directories(dir);
  auto write_gz = [&](const std::string& name, const std::string& bytes) {
    gzFile g = gzopen((dir / name).c_str(), "wb");
    gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(g);
  };
  auto be = [](uint32_t v) {
    std::string s(4, '\0');
    for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
    return s;
  };
  expect_error<IoError>([&] { load_fashion_mnist(dir.string()); }, {"t10k-images-idx3-ubyte", "not found"});
  // Images claim 3 x 28 x 28 but hold only 2 images; labels fine.
  write_gz("t10k-images-idx3-ubyte.gz", be(0x803) + be(3) + be(28) + be(28) + std::string(2 * 784, '\0'));
  write_gz("t10k-labels-idx1-ubyte.gz", be(0x801) + be(3) + std::string(3, '\0'));
  expect_error<IoError>([&] { load_fashion_mnist(dir.string()); }, {"truncated", "t10k-images-idx3-ubyte.gz", "2352"});
  // Labels with the image magic.
  write_gz("t10k-images-idx3-ubyte.gz", be(0x803) + be(3) + be(28) + be(28) + std::string(3 * 784, '\0'));
  write_gz("t10k-labels-idx1-ubyte.gz", be(0x803) + be(3) + std::string(3, '\0'));
  expect_error<IoError>([&] { load_fashion_mnist(dir.string()); }, {"bad IDX magic", "0x803", "0x801"});
  // Count mismatch.
  write_gz("t10k-labels-idx1-ubyte.gz", be(0x801) + be(4) + std::string(4, '\0'));
  expect_error<IoError>([&] { load_fashion_mnist(dir.string()); }, {"count mismatch", "3 images", "4 labels"});
  // Consistent tiny set loads.
  write_gz("t10k-labels-idx1-ubyte.gz", be(0x801) + be(3) + std::string("\x01\x02\x03", 3));
  auto d = load_fashion_mnist(dir.string());
  EXPECT_EQ(d.size(), 3);
  EXPECT_EQ(d.labels[2].item<int64_t>(), 3);
  // A gzip stream cut in half.
  {
    std::ifstream in(dir / "t10k-images-idx3-ubyte.gz", std::ios::binary);
    std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir / "t10k-images-idx3-ubyte.gz", std::ios::binary | std::ios::trunc) << gz.substr(0, gz.size() / 2);
  }
  expect_error<IoError>([&] { load_fashion_mnist(dir.string()); }, {"t10k-images-idx3-ubyte.gz"});
}

TEST(DatasetSpec, Parse) {
  auto s = parse_dataset_spec("cifar10:/a/b");
  EXPECT_EQ(s.scheme, "cifar10");
  EXPECT_EQ(s.path, "/a/b");
  auto f = parse_dataset_spec("fashion-mnist:rel/dir:with:colons");
  EXPECT_EQ(f.scheme, "fashion-mnist");
  EXPECT_EQ(f.path, "rel/dir:with:colons");
  expect_error<ConfigError>([] { parse_dataset_spec("imagenet:/x"); }, {"\"imagenet\"", "cifar10:<dir>", "fashion-mnist:<dir>"});
  expect_error<ConfigError>([] { parse_dataset_spec("/just/a/path"); }, {"unknown scheme", "cifar10:<dir>"});
  expect_error<ConfigError>([] { parse_dataset_spec("cifar10:"); }, {"no path"});
  auto d = load_dataset("cifar10:" + cifar_dir());
  EXPECT_EQ(d.size(), 10000);
  EXPECT_EQ(d.name, "cifar10");
}
