// `flexquant sweep` end to end on stories260K: table, CSV and the gnuplot PNG; bad options fail with a clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/cli_runner.h"
#include "test_data.h"

using flexquant::testing::run_cli;
using flexquant::testing::shared_path;
namespace fs = std::filesystem;

namespace {
std::string lm_workload() {
  return " --model " + shared_path("data/lm/stories260K.bin") + " --data " +
         shared_path("data/lm/tinystories_valid_first.txt") + " --eval-limit 800";
}
}  // namespace

TEST(CliSweep, Stories260KTableCsvAndPlot) {
  const fs::path dir = fs::temp_directory_path() / "fq_cli_sweep";
  fs::create_directories(dir);
  const std::string csv = (dir / "s.csv").string(), png = (dir / "s.png").string();
  auto r = run_cli("sweep" + lm_workload() + " --formats sbits23,sbits6,sbits2,fp8_e4m3 --csv " + csv + " --plot " + png);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("| sbits6 | 6 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sweep 8/8"), std::string::npos) << "progress lines missing: " << r.out;
  std::ifstream f(csv);
  std::stringstream ss;
  ss << f.rdbuf();
  int lines = 0;
  for (char c : ss.str()) lines += c == '\n';
  EXPECT_EQ(lines, 1 + 1 + 8) << ss.str();  // header, FP32, 4 formats x 2 modes
  ASSERT_TRUE(fs::exists(png));
  std::ifstream p(png, std::ios::binary);
  char magic[4] = {};
  p.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG") << "not a PNG";
  EXPECT_GT(fs::file_size(png), 2000u);
  fs::remove_all(dir);
}

TEST(CliSweep, BadOptionsNameTheFix) {
  auto r = run_cli("sweep" + lm_workload() + " --formats sbits99");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("sbits99"), std::string::npos) << r.out;
  r = run_cli("sweep" + lm_workload() + " --modes nearest");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("stochastic"), std::string::npos) << "valid modes not listed: " << r.out;
  r = run_cli("sweep" + lm_workload() + " --weights-only --activations-only");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("exclude each other"), std::string::npos) << r.out;
}
