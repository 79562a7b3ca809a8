// Runs the built flexquant binary ($FLEXQUANT_CLI, set by CMake for ctest) and captures output + exit code.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace flexquant::testing {

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

inline CliResult run_cli(const std::string& args, const std::string& stdin_text = "") {
  const char* cli = std::getenv("FLEXQUANT_CLI");
  if (!cli) {
    ADD_FAILURE() << "FLEXQUANT_CLI is not set: ctest sets it; by hand: FLEXQUANT_CLI=build/flexquant";
    return {};
  }
  std::string cmd = "printf '%s' '" + stdin_text + "' | '" + cli + "' " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return {};
  }
  CliResult r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string l; std::getline(is, l);) out.push_back(l);
  return out;
}

}  // namespace flexquant::testing
