// End-to-end: `flexquant formats` and `flexquant round` through the built binary ($FLEXQUANT_CLI, set by CMake
// for ctest; set it by hand otherwise), checking output and exit codes.
#include <gtest/gtest.h>

#include "cli/cli_runner.h"
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

using flexquant::testing::lines;
using flexquant::testing::run_cli;
using Result = flexquant::testing::CliResult;

TEST(CliFormats, ListAndShow) {
  const Result list = run_cli("formats");
  ASSERT_EQ(list.code, 0) << list.out;
  int rows = 0;
  for (const auto& l : lines(list.out)) {
    if (l.rfind("fp8_e4m3 ", 0) == 0) {
      EXPECT_NE(l.find("448"), std::string::npos) << l;
      EXPECT_NE(l.find("0.015625"), std::string::npos) << l;  // min normal 2^-6
      EXPECT_NE(l.find("253"), std::string::npos) << l;
      ++rows;
    }
    if (l.rfind("fp4_e2m1 ", 0) == 0) {
      EXPECT_NE(l.find(" 6 "), std::string::npos) << l;
      EXPECT_NE(l.find("15"), std::string::npos) << l;
      ++rows;
    }
  }
  EXPECT_EQ(rows, 2) << list.out;
  const Result show = run_cli("formats --show fp4_e2m1");
  ASSERT_EQ(show.code, 0) << show.out;
  std::vector<std::string> want = {"-6", "-4", "-3", "-2", "-1.5", "-1", "-0.5", "0",
                                   "0.5", "1", "1.5", "2", "3", "4", "6"};
  auto got = lines(show.out);
  got.erase(got.begin());  // the header line (stderr)
  EXPECT_EQ(got, want);
}

TEST(CliFormats, RoundModesAndSeeds) {
  const std::string in = "1.3 2.6 -7 100 inf 0.25 1.25 -0.3\n";
  Result r = run_cli("round --format fp4_e2m1 --mode nearest_even", in);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(lines(r.out), (std::vector<std::string>{"1.5", "3", "-6", "6", "6", "0", "1", "-0.5"}));
  r = run_cli("round --format fp4_e2m1 --mode toward_zero", in);
  EXPECT_EQ(lines(r.out), (std::vector<std::string>{"1", "2", "-6", "6", "6", "0", "1", "-0"}));
  r = run_cli("round --format int4 --mode nearest_away --scale 0.5", in);
  EXPECT_EQ(lines(r.out), (std::vector<std::string>{"1.5", "2.5", "-4", "3.5", "3.5", "0.5", "1.5", "-0.5"}));
  // Stochastic: the same seed gives the same output, another seed another one.
  std::string many;
  for (int i = 0; i < 200; ++i) many += "0.3 ";
  const Result a = run_cli("round --format int8 --mode stochastic --seed 5", many);
  const Result b = run_cli("round --format int8 --mode stochastic --seed 5", many);
  const Result c = run_cli("round --format int8 --mode stochastic --seed 6", many);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  const auto la = lines(a.out);
  ASSERT_EQ(la.size(), 200u);
  int ones = 0;
  for (const auto& l : la) {
    EXPECT_TRUE(l == "0" || l == "1") << l;
    ones += l == "1";
  }
  EXPECT_GT(ones, 30);  // expectation 60, sigma 6.5
  EXPECT_LT(ones, 90);
}

TEST(CliFormats, BadInputsExitTwoAndNameValidValues) {
  Result r = run_cli("round --format fp7_e9m9 --mode nearest_even", "1");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("fp8_e4m3"), std::string::npos) << r.out;
  r = run_cli("round --format fp8_e4m3 --mode nearest", "1");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("nearest_even, nearest_away, toward_zero, up, down, stochastic"), std::string::npos) << r.out;
  r = run_cli("round --format int4", "1 abc");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("\"abc\""), std::string::npos) << r.out;
}
