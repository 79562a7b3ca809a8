// Dataset readers on hostile input (issue #14): IDX decompression is bounded, and a .npy shape that is not numbers is an IoError naming the file.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <stb/stb_image_write.h>

#include "flexquant/datasets.h"
#include "flexquant/error.h"
#include "hostile_input.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;
using flexquant::testing::expect_error;
using flexquant::testing::fuzz_regression;
using flexquant::testing::image_folder_with;
using flexquant::testing::read_bytes;
using flexquant::testing::le;
using flexquant::testing::write_temp;

namespace {

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

// An IDX labels file with `n` labels, plain.
std::string idx_labels(uint32_t n) { return be32(0x0801) + be32(n) + std::string(n, '\0'); }

}  // namespace

TEST(DatasetsHostile, IdxDecompressionIsBounded) {
  // 300 MiB of zeros gzip to ~300 KB; the reader decompressed all of it before checking the header.
  const std::string dir = fs::path(write_temp("bomb/t10k-labels-idx1-ubyte", idx_labels(1))).parent_path().string();
  const std::string images = dir + "/t10k-images-idx3-ubyte.gz";
  gzFile f = gzopen(images.c_str(), "wb1");
  ASSERT_TRUE(f);
  const std::string head = be32(0x0803) + be32(1) + be32(28) + be32(28), zeros(1 << 20, '\0');
  gzwrite(f, head.data(), static_cast<unsigned>(head.size()));
  for (int i = 0; i < 300; ++i) gzwrite(f, zeros.data(), static_cast<unsigned>(zeros.size()));
  gzclose(f);
  expect_error<IoError>([&] { load_fashion_mnist(dir, "test"); }, {"t10k-images-idx3-ubyte.gz", "decompresses to more than"});
}

TEST(DatasetsHostile, NpyShapeThatIsNotNumbersIsAnIoError) {
  // std::stoll's std::invalid_argument / std::out_of_range escaped, naming neither file nor field.
  auto npy = [](const std::string& shape) {
    std::string h = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + shape + "), }";
    while ((10 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    return std::string("\x93NUMPY\x01\x00", 8) + char(h.size()) + char(0) + h;
  };
  for (const std::string shape : {"abc,", "99999999999999999999999,", "1e3,"}) {
    const std::string p = write_temp("bad.npy", npy(shape));
    expect_error<IoError>([&] { load_npy(p); }, {"bad.npy", "shape", "not a dimension"});
  }
}

TEST(DatasetsHostile, JpegHuffmanTableWithTooManyCodesIsRefused) {
  // Found by fuzz_image: a DHT segment with 680 codes; stb_image 2.27 wrote them into its 257-byte size table,
  // past the end into the decoder's state (UBSan: index 257 out of bounds).
  const std::string dir =
      image_folder_with("huffman", "0.jpg", read_bytes(fuzz_regression("image/stb-huffman-table-overflow.jpg")));
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.jpg", "Huffman table", "more than 256 codes"});
}

TEST(DatasetsHostile, JpegClaimingMorePixelsThanItsBytesCanHoldIsRefused) {
  // fuzz_image (a timeout): a 990-byte JPEG whose header claims 32 x 65302 pixels; stb decoded the missing data.
  // Here: a real 32 x 32 JPEG of CIFAR-like noise whose SOF0 height is patched to 65302.
  std::vector<unsigned char> px(32 * 32);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<unsigned char>((i * 2654435761u) >> 24);
  std::string jpg;
  auto sink = [](void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), n); };
  ASSERT_TRUE(stbi_write_jpg_to_func(sink, &jpg, 32, 32, 1, px.data(), 90));
  const std::string ok = image_folder_with("jpeg-ok", "0.jpg", jpg);
  EXPECT_EQ(load_image_folder(ok).images.size(2), 32);  // the unpatched file decodes
  const size_t sof = jpg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpg[sof + 5] = char(65302 >> 8), jpg[sof + 6] = char(65302 & 0xFF);  // SOF0: length(2) precision(1) height(2)
  const std::string dir = image_folder_with("jpeg-tall", "0.jpg", jpg);
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.jpg", "32x65302", "truncated or corrupt"});
}

TEST(DatasetsHostile, ImageHeaderClaimingGigapixelsIsRefusedBeforeDecoding) {
  // A 54-byte BMP header claiming 16384 x 16384 pixels: stb decoded the missing pixels as zeros (768 MiB), then
  // they became 3 GiB of float32.
  const std::string bmp = "BM" + le<uint32_t>(54) + le<uint32_t>(0) + le<uint32_t>(54) + le<uint32_t>(40) +
                          le<int32_t>(16384) + le<int32_t>(16384) + le<uint16_t>(1) + le<uint16_t>(24) +
                          le<uint32_t>(0) + le<uint32_t>(0) + le<int32_t>(0) + le<int32_t>(0) + le<uint32_t>(0) +
                          le<uint32_t>(0);
  const std::string dir = image_folder_with("huge", "0.bmp", bmp);
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.bmp", "16384x16384", "at most 16 megapixels"});
}

TEST(DatasetsHostile, ImageOfHeightZeroIsRefused) {
  // Found by fuzz_image: stb_image decodes a BMP whose height is 0; --resize then divided by the shorter side (0).
  const std::string dir = image_folder_with("zero", "0.bmp", read_bytes(fuzz_regression("image/bmp-zero-height.bmp")));
  ImagePreprocess p;
  p.resize = 40;
  expect_error<IoError>([&] { load_image_folder(dir, p); }, {"0.bmp", "x0 pixels", "at least one"});
}

TEST(DatasetsHostile, BmpWhosePixelsAreMissingIsRefused) {
  // Found by fuzz_image (a timeout): a 983-byte BMP claiming 65311 x 32 pixels decoded to zeros, then --resize 40
  // made it 40 x 81638.
  const std::string dir =
      image_folder_with("short", "0.bmp", read_bytes(fuzz_regression("image/bmp-missing-pixels.bmp")));
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.bmp", "65311x32", "holds only 983 bytes"});
  // a 2048 x 2048 header with 929 of its 12 MiB of pixels
  std::string small = "BM" + le<uint32_t>(983) + le<uint32_t>(0) + le<uint32_t>(54) + le<uint32_t>(40) +
                      le<int32_t>(2048) + le<int32_t>(2048) + le<uint16_t>(1) + le<uint16_t>(24) + std::string(24, '\0');
  small += std::string(983 - small.size(), '\x7f');
  image_folder_with("short", "0.bmp", small);
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.bmp", "2048x2048", "holds only 983 bytes"});
}

TEST(DatasetsHostile, PngChunkLongerThanTheFileIsRefused) {
  // Found by fuzz_image (out of memory): an IDAT chunk claiming 1.4 GB in a small file; stb_image grew its buffer
  // to the claimed length before reading.
  const std::string dir = image_folder_with("idat", "0.png", read_bytes(fuzz_regression("image/png-huge-idat.png")));
  expect_error<IoError>([&] { load_image_folder(dir); }, {"0.png", "chunk longer than the rest of the file"});
}
