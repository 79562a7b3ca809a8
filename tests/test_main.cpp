// Shared GoogleTest main: sets up threads/BLAS once and keeps logs quiet unless FLEXQUANT_VERBOSE is set.
#include <gtest/gtest.h>

#include <cstdlib>

#include "flexquant/runtime.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  flexquant::init_runtime();
  if (!std::getenv("FLEXQUANT_VERBOSE")) flexquant::set_log_level(flexquant::LogLevel::Warn);
  return RUN_ALL_TESTS();
}
