// Locates the project's shared real data (../shared from the repository root) for tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace flexquant::testing {

/// Path to a file under ../shared (or $FLEXQUANT_SHARED). Fails the test with a clear message if missing:
/// these tests use real models and data, never stand-ins.
inline std::string shared_path(const std::string& rel) {
  const char* env = std::getenv("FLEXQUANT_SHARED");
  std::filesystem::path root = env ? env : "../shared";
  auto p = root / rel;
  if (!std::filesystem::exists(p)) {
    ADD_FAILURE() << "missing shared data file " << p
                  << " - tests run from the repository root with ../shared beside it "
                     "(or set FLEXQUANT_SHARED=/path/to/shared)";
  }
  return p.string();
}

}  // namespace flexquant::testing
