// Locates the project's shared real data (../shared from the repository root) for tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <exception>
#include <initializer_list>
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

/// Expects `fn` to throw error type E whose message contains every string in `parts`.
template <typename E, typename F>
inline void expect_error(F fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks \"" << p << "\": " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

}  // namespace flexquant::testing
