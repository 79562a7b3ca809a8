// Data for any model: image folders and .npy arrays, checked against the CIFAR-10 records they are written from.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <filesystem>
#include <fstream>

#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "test_data.h"

using namespace flexquant;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

namespace {

struct TmpDir {
  fs::path path = fs::temp_directory_path() / ("fq_images_" + std::to_string(::getpid()));
  TmpDir() { fs::create_directories(path); }
  ~TmpDir() { fs::remove_all(path); }
};

// The first n CIFAR-10 test records as uint8 [n, 32, 32, 3] pixels and their labels.
std::pair<torch::Tensor, torch::Tensor> cifar_pixels(int64_t n) {
  auto d = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin"), Normalization::identity(3)).slice(0, n);
  return {(d.images * 255).round().to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous(), d.labels};
}

void write_npy(const fs::path& p, const torch::Tensor& t, const std::string& descr) {
  std::string shape;
  for (auto d : t.sizes()) shape += std::to_string(d) + ", ";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  h.resize(((h.size() + 11 + 63) / 64) * 64 - 11, ' ');
  h += '\n';
  std::ofstream f(p, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(h.size());
  f.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
  f << h;
  f.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
}

}  // namespace

TEST(ImageFolder, PngFolderEqualsTheCifarRecordsItHolds) {
  TmpDir tmp;
  auto [px, labels] = cifar_pixels(12);
  for (int64_t i = 0; i < 12; ++i) {
    fs::path dir = tmp.path / ("class" + std::to_string(labels[i].item<int64_t>()));
    fs::create_directories(dir);
    char name[32];
    std::snprintf(name, sizeof name, "%03lld.png", static_cast<long long>(i));
    ASSERT_TRUE(stbi_write_png((dir / name).c_str(), 32, 32, 3, px[i].data_ptr(), 32 * 3));
  }
  ImageDataset folder = load_dataset("images:" + tmp.path.string());
  auto cifar = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin")).slice(0, 12);
  ASSERT_EQ(folder.size(), 12);
  // Every image is one of the records, bit for bit after the same normalisation, under its own class.
  std::vector<std::string> classes;
  for (auto& e : fs::directory_iterator(tmp.path)) classes.push_back(e.path().filename().string());
  std::sort(classes.begin(), classes.end());
  for (int64_t i = 0; i < 12; ++i) {
    int matches = 0;
    for (int64_t j = 0; j < 12; ++j)
      if (torch::equal(folder.images[i], cifar.images[j])) {
        ++matches;
        EXPECT_EQ(classes[folder.labels[i].item<int64_t>()], "class" + std::to_string(cifar.labels[j].item<int64_t>()));
      }
    EXPECT_GE(matches, 1) << "image " << i;
  }
  // Records interleave the classes: the first K records hold K different labels.
  const int64_t k = static_cast<int64_t>(classes.size());
  EXPECT_EQ(std::get<0>(at::_unique(folder.labels.slice(0, 0, k))).numel(), k);
}

TEST(ImageFolder, SizesDifferUntilResizeAndCropMakeThemEqual) {
  TmpDir tmp;
  auto [px, labels] = cifar_pixels(2);
  fs::create_directories(tmp.path / "a");
  ASSERT_TRUE(stbi_write_png((tmp.path / "a" / "0.png").c_str(), 32, 32, 3, px[0].data_ptr(), 32 * 3));
  torch::Tensor big = torch::nn::functional::interpolate(px[1].permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat),
      torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{40, 48}).mode(torch::kNearest))
      .squeeze(0).permute({1, 2, 0}).round().to(torch::kUInt8).contiguous();
  ASSERT_TRUE(stbi_write_jpg((tmp.path / "a" / "1.jpg").c_str(), 48, 40, 3, big.data_ptr(), 95));
  flexquant::testing::expect_error<ConfigError>([&] { load_image_folder(tmp.path.string()); }, {"1.jpg", "--resize"});
  ImagePreprocess p;
  p.resize = 36;
  p.crop = 32;
  p.channel_order = "bgr";
  p.norm = Normalization{{0.5, 0.5, 0.5}, {0.25, 0.25, 0.25}};
  ImageDataset d = load_image_folder(tmp.path.string(), p);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_LE(d.images.abs().max().item<double>(), 2.0 + 1e-6);  // (x/255 - 0.5) / 0.25
}

TEST(Npy, Uint8PixelsAndTextLabelsEqualTheCifarRecords) {
  TmpDir tmp;
  auto [px, labels] = cifar_pixels(10);
  write_npy(tmp.path / "images.npy", px, "|u1");
  {
    std::ofstream f(tmp.path / "labels.txt");
    for (int64_t i = 0; i < 10; ++i) f << labels[i].item<int64_t>() << "\n";
  }
  ImageDataset d = load_dataset("npy:" + (tmp.path / "images.npy").string());  // labels.txt found beside it
  auto cifar = load_cifar10(shared_path("data/cifar10/cifar10_test_00.bin")).slice(0, 10);
  EXPECT_TRUE(torch::equal(d.images, cifar.images));
  EXPECT_TRUE(torch::equal(d.labels, cifar.labels));
  // Float images are taken as they are, with .npy labels.
  write_npy(tmp.path / "f.npy", cifar.images.contiguous(), "<f4");
  write_npy(tmp.path / "l.npy", cifar.labels.contiguous(), "<i8");
  ImageDataset f = load_dataset("npy:" + (tmp.path / "f.npy").string() + "," + (tmp.path / "l.npy").string());
  EXPECT_TRUE(torch::equal(f.images, cifar.images));
}

TEST(Npy, BadFilesNameTheProblem) {
  TmpDir tmp;
  auto [px, labels] = cifar_pixels(4);
  write_npy(tmp.path / "t.npy", px, "|u1");
  fs::resize_file(tmp.path / "t.npy", fs::file_size(tmp.path / "t.npy") - 100);
  flexquant::testing::expect_error<IoError>([&] { load_npy((tmp.path / "t.npy").string()); }, {"t.npy", "truncated"});
  std::ofstream(tmp.path / "x.npy") << "not numpy";
  flexquant::testing::expect_error<IoError>([&] { load_npy((tmp.path / "x.npy").string()); }, {"x.npy", "magic"});
  write_npy(tmp.path / "big.npy", torch::zeros({2}, torch::kUInt8), "|u1");
  flexquant::testing::expect_error<ConfigError>([&] { load_dataset("npy:" + (tmp.path / "big.npy").string()); },
                                                {"no labels"});
  flexquant::testing::expect_error<ConfigError>([] { load_dataset("imgs:/x"); }, {"images:", "npy:"});
}
