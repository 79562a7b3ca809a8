// Helpers for hostile-input tests (issue #14): a reader is handed exactly the given bytes, or an input the fuzzer
// found (scripts/fuzz.sh), committed under tests/data/fuzz-regressions/.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace flexquant::testing {

/// Writes `bytes` to `name` (sub-folders created) in a scratch folder of this test process; returns the path.
inline std::string write_temp(const std::string& name, const std::string& bytes) {
  const auto p = std::filesystem::temp_directory_path() / ("flexquant-test-" + std::to_string(::getpid())) / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  return p.string();
}

/// tests/data/fuzz-regressions/<rel> (tests run from the repository root).
inline std::string fuzz_regression(const std::string& rel) {
  const std::filesystem::path p = std::filesystem::path("tests/data/fuzz-regressions") / rel;
  if (!std::filesystem::exists(p)) ADD_FAILURE() << "missing fuzz regression input " << p;
  return p.string();
}

/// The bytes of a file (a committed fuzz regression input).
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// An image folder in the scratch folder holding one class with one image, `name` (e.g. "0.bmp"), of `bytes`;
/// returns the folder (for load_image_folder).
inline std::string image_folder_with(const std::string& folder, const std::string& name, const std::string& bytes) {
  return std::filesystem::path(write_temp(folder + "/cat/" + name, bytes)).parent_path().parent_path().string();
}

/// Little-endian bytes of a trivially copyable value.
template <class T>
std::string le(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

}  // namespace flexquant::testing
