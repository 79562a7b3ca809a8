// flexquant CLI: parse flags, call the library, map typed errors to exit codes.
#include <c10/util/Exception.h>

#include <iostream>
#include <vector>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/runtime.h"

namespace flexquant::cli {
namespace {
struct Entry {
  std::string name, help;
  std::function<void(CLI::App&)> setup;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

bool register_command(const std::string& name, const std::string& help, std::function<void(CLI::App&)> setup) {
  registry().push_back({name, help, std::move(setup)});
  return true;
}
}  // namespace flexquant::cli

int main(int argc, char** argv) {
  using namespace flexquant;
  CLI::App app{"flexquant: post-training quantization (FlexRound, AdaRound, GPTQ, ...) for CNNs and LLMs"};
  app.set_version_flag("--version", std::string("flexquant ") + version() + " (built from " + build_commit() + ")");
  app.require_subcommand(1);
  int threads = 0;
  bool quiet = false, verbose = false, deterministic_run = false;
  app.add_option("--threads", threads, "Worker threads (default: $FLEXQUANT_THREADS, else all cores)");
  app.add_flag("-q,--quiet", quiet, "Only warnings and errors");
  app.add_flag("-v,--verbose", verbose, "Debug output");
  app.add_flag("--deterministic", deterministic_run,
               "Same output bytes at any --threads: every op on one thread (slower; docs/RESULTS.md Reproducibility). "
               "Language models store the same model and metric at any --threads without it; CNNs need it");
  for (auto& e : cli::registry()) e.setup(*app.add_subcommand(e.name, e.help));
  app.parse_complete_callback([&] {
    if (quiet) set_log_level(LogLevel::Warn);
    if (verbose) set_log_level(LogLevel::Debug);
    std::string blas = init_runtime(threads);
    if (deterministic_run) enable_deterministic();
    install_stop_handlers();
    log_debug("BLAS: " + blas);
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << std::endl;
    return 70;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 70;
  }
  return 0;
}
