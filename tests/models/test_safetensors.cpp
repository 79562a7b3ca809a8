// Safetensors reader/writer: round trip over every dtype, every corruption case the reader must name,
// and the real ResNet-20 file (tensor names, shapes, __metadata__).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "flexquant/error.h"
#include "flexquant/safetensors.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace flexquant;

using flexquant::testing::expect_error;

namespace {

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("fq_st_test_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

// Writes <u64 len><header><data> verbatim, so tests can build any corruption.
std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                      int64_t len_override = -1) {
  fs::path p = temp_dir() / name;
  std::ofstream out(p, std::ios::binary);
  uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
  return p.string();
}


}  // namespace

TEST(SafeTensors, RoundTripAllDtypes) {
  torch::manual_seed(0);
  std::map<std::string, torch::Tensor> ts;
  ts["f64"] = torch::randn({3, 4}, torch::kFloat64);
  ts["f32"] = torch::randn({2, 3, 4});
  ts["f16"] = torch::randn({5}).to(torch::kFloat16);
  ts["bf16"] = torch::randn({2, 2}).to(torch::kBFloat16);
  ts["i64"] = torch::randint(-1000, 1000, {7}, torch::kInt64);
  ts["i32"] = torch::randint(-1000, 1000, {3, 1}, torch::kInt32);
  ts["i16"] = torch::randint(-1000, 1000, {4}, torch::kInt16);
  ts["i8"] = torch::randint(-128, 127, {9}, torch::kInt8);
  ts["u8"] = torch::randint(0, 255, {2, 5}, torch::kUInt8);
  ts["bool"] = torch::randint(0, 2, {6}, torch::kInt64).to(torch::kBool);
  ts["scalar"] = torch::tensor(3.5f).reshape({});
  ts["empty"] = torch::zeros({0, 4});
  ts["strided"] = torch::randn({4, 6}).t();  // non-contiguous input must be written correctly
  const std::string p = (temp_dir() / "rt.safetensors").string();
  save_safetensors(p, ts, {{"source", "unit test"}, {"format", "pt"}});
  SafeTensorsFile f = load_safetensors(p);
  ASSERT_EQ(f.tensors.size(), ts.size());
  int checked = 0;
  for (const auto& [name, t] : ts) {
    const torch::Tensor& r = f.at(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(r.sizes(), t.sizes()) << name;
    EXPECT_TRUE(r.is_contiguous()) << name;
    EXPECT_TRUE(torch::equal(r, t.contiguous())) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 13);
  EXPECT_EQ(f.metadata.at("source"), "unit test");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  // Header is padded so data starts 8-byte aligned.
  std::ifstream in(p, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(SafeTensors, MissingFile) {
  expect_error<IoError>([] { load_safetensors("/nonexistent/dir/x.safetensors"); },
                        {"not found", "/nonexistent/dir/x.safetensors"});
}

TEST(SafeTensors, TooShortForLength) {
  fs::path p = temp_dir() / "short.safetensors";
  std::ofstream(p, std::ios::binary) << "abc";
  expect_error<IoError>([&] { load_safetensors(p.string()); }, {"truncated", p.string()});
}

TEST(SafeTensors, HeaderLengthBeyondFile) {
  auto p = write_raw("hlen.safetensors", "{}", "", 1000);
  expect_error<IoError>([&] { load_safetensors(p); }, {"truncated", "header length 1000", p});
}

TEST(SafeTensors, BadJson) {
  auto p = write_raw("badjson.safetensors", "{\"a\": {\"dtype\": ", "");
  expect_error<IoError>([&] { load_safetensors(p); }, {"bad JSON", p});
}

TEST(SafeTensors, HeaderNotObject) {
  auto p = write_raw("arr.safetensors", "[1,2]", "");
  expect_error<IoError>([&] { load_safetensors(p); }, {"not a JSON object", p});
}

TEST(SafeTensors, UnknownDtype) {
  auto p = write_raw("dtype.safetensors", R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})",
                     std::string(2, '\0'));
  expect_error<IoError>([&] { load_safetensors(p); }, {"\"w\"", "F8_E4M3", "BF16", p});
}

TEST(SafeTensors, OffsetsBeyondFile) {
  auto p = write_raw("trunc.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                     std::string(8, '\0'));
  expect_error<IoError>([&] { load_safetensors(p); }, {"truncated", "\"w\"", "8 bytes", p});
}

TEST(SafeTensors, ShapeOffsetMismatch) {
  auto p = write_raw("mismatch.safetensors", R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})",
                     std::string(16, '\0'));
  expect_error<IoError>([&] { load_safetensors(p); }, {"\"w\"", "does not match", "expected 12 bytes", p});
}

TEST(SafeTensors, OverlappingOffsets) {
  auto p = write_raw("overlap.safetensors",
                     R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                     std::string(12, '\0'));
  expect_error<IoError>([&] { load_safetensors(p); }, {"overlapping", "\"a\"", "\"b\"", p});
}

TEST(SafeTensors, MalformedEntryAndMetadata) {
  auto p1 = write_raw("noshape.safetensors", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})",
                      std::string(4, '\0'));
  expect_error<IoError>([&] { load_safetensors(p1); }, {"\"w\"", "malformed"});
  auto p2 = write_raw("negshape.safetensors", R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                      std::string(4, '\0'));
  expect_error<IoError>([&] { load_safetensors(p2); }, {"\"w\"", "non-negative"});
  auto p3 = write_raw("meta.safetensors", R"({"__metadata__": {"k": 3}})", "");
  expect_error<IoError>([&] { load_safetensors(p3); }, {"__metadata__", "\"k\"", "not a string"});
  auto p4 = write_raw("backwards.safetensors", R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})",
                      std::string(4, '\0'));
  expect_error<IoError>([&] { load_safetensors(p4); }, {"\"w\"", "begin > end"});
}

TEST(SafeTensors, HeaderOrderIsKept) {
  auto p = write_raw("order.safetensors",
                     R"({"zeta": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "alpha": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                     std::string("\x07\x09", 2));
  auto f = load_safetensors(p);
  ASSERT_EQ(f.names.size(), 2u);
  EXPECT_EQ(f.names[0], "zeta");
  EXPECT_EQ(f.names[1], "alpha");
  EXPECT_EQ(f.at("alpha").item<uint8_t>(), 9);
  expect_error<ModelError>([&] { f.at("beta"); }, {"\"beta\"", p, "zeta"});
}

TEST(SafeTensors, CheckTensorSetAndFinite) {
  std::map<std::string, torch::Tensor> ts{{"a.weight", torch::ones({2, 3})},
                                          {"a.bias", torch::zeros({2})},
                                          {"bn.num_batches_tracked", torch::zeros({}, torch::kInt64)}};
  const std::string p = (temp_dir() / "set.safetensors").string();
  save_safetensors(p, ts);
  auto f = load_safetensors(p);
  check_tensor_set(f, {{"a.weight", {2, 3}}, {"a.bias", {2}}}, "toy", {"num_batches_tracked"});
  expect_error<ModelError>([&] { check_tensor_set(f, {{"a.weight", {2, 3}}, {"a.bias", {2}}}, "toy"); },
                           {"unexpected", "bn.num_batches_tracked", "toy"});
  expect_error<ModelError>(
      [&] { check_tensor_set(f, {{"a.weight", {2, 3}}, {"a.bias", {2}}, {"b.weight", {1}}}, "toy", {"num_batches_tracked"}); },
      {"\"b.weight\"", "missing"});
  expect_error<ModelError>([&] { check_tensor_set(f, {{"a.weight", {3, 2}}, {"a.bias", {2}}}, "toy", {"num_batches_tracked"}); },
                           {"\"a.weight\"", "wrong shape", "[2, 3]", "[3, 2]"});
  check_finite(f);
  f.tensors["a.bias"][1] = std::numeric_limits<float>::quiet_NaN();
  expect_error<NumericError>([&] { check_finite(f); }, {"\"a.bias\"", "1 of 2"});
}

TEST(SafeTensors, RealResNet20) {
  auto f = load_safetensors(flexquant::testing::shared_path("data/cifar10/resnet20.safetensors"));
  int64_t params = 0;
  for (const auto& [n, t] : f.tensors) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << n;
    params += t.numel();
  }
  EXPECT_EQ(params, 271098);  // README's count (BN running stats included)
  EXPECT_EQ(f.names.size(), 97u);
  EXPECT_EQ(f.at("conv1.weight").sizes(), (std::vector<int64_t>{16, 3, 3, 3}));
  EXPECT_EQ(f.at("linear.weight").sizes(), (std::vector<int64_t>{10, 64}));
  EXPECT_EQ(f.at("layer3.2.conv2.weight").sizes(), (std::vector<int64_t>{64, 64, 3, 3}));
  EXPECT_FALSE(f.metadata.empty());
  EXPECT_EQ(f.metadata.at("best_prec1").substr(0, 5), "91.78");  // README: upstream top-1
  EXPECT_EQ(f.metadata.at("source"), "resnet20-12fca82f.th");
  check_finite(f);
}
