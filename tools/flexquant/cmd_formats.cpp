// `flexquant formats` (list the presets, or every level of one format) and `flexquant round` (round numbers
// from stdin onto a format's grid): thin wrappers over include/flexquant/format.h.
#include <fmt/format.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/format.h"

namespace flexquant::cli {
namespace {

std::string num(double v) { return fmt::format("{:.6g}", v); }

struct FormatsCmd {
  std::string show;
  void run() const {
    if (!show.empty()) {
      const Format f = Format::parse(show);
      std::cerr << f.name() << ": " << f.layout() << ", " << f.num_levels() << " levels\n";
      for (double v : levels(f)) std::cout << fmt::format("{}", v) << "\n";
      return;
    }
    std::cout << fmt::format("{:<12} {:>4}  {:<58} {:>12} {:>12} {:>12} {:>11}\n", "name", "bits", "layout", "max",
                             "min normal", "min subnorm", "levels");
    for (const auto& [name, desc] : Format::presets()) {
      const Format f = Format::parse(name);
      std::cout << fmt::format("{:<12} {:>4}  {:<58} {:>12} {:>12} {:>12} {:>11}\n", name, f.bits(), f.layout(),
                               num(f.max_value()), num(f.min_normal()), num(f.min_subnormal()), f.num_levels());
    }
    std::cout << "\nAny other format by grammar: int<b>, int<b>_r, uint<b> (b = 2..16); "
                 "fp<n>_e<E>m<M>[_ieee|_fn|_sat][_b<bias>][_nosub]; sbits<k> (k = 0..23); pow<b>_a<x>[_full].\n"
                 "Rounding modes (flexquant round --mode): ";
    for (size_t i = 0; i < rounding_mode_names().size(); ++i)
      std::cout << (i ? ", " : "") << rounding_mode_names()[i];
    std::cout << "\n";
  }
};

struct RoundCmd {
  std::string format, mode = "nearest_even";
  uint64_t seed = 0;
  float scale = 1.0f;
  void run() const {
    const Format f = Format::parse(format);
    const RoundingMode m = parse_rounding_mode(mode);
    std::vector<float> xs;
    std::string tok;
    while (std::cin >> tok) {
      char* end = nullptr;
      const float v = std::strtof(tok.c_str(), &end);
      FQ_CHECK(end && *end == '\0', ConfigError, "input \"", tok, "\" (number ", xs.size() + 1,
               ") is not a number; round reads whitespace-separated decimal numbers (inf and nan allowed)");
      xs.push_back(v);
    }
    if (xs.empty()) return;
    const torch::Tensor x = torch::from_blob(xs.data(), {int64_t(xs.size())}, torch::kFloat);
    const torch::Tensor q = quantize(x, f, ScaleParams::per_tensor(scale), m, seed);
    const float* qp = q.data_ptr<float>();
    std::string out;
    for (size_t i = 0; i < xs.size(); ++i) out += fmt::format("{}\n", qp[i]);
    std::cout << out;
  }
};

const bool reg_formats = register_command("formats", "List the number-format presets, or every level of one",
                                          [](CLI::App& app) {
  auto c = std::make_shared<FormatsCmd>();
  app.add_option("--show", c->show, "Print every level of this format (preset or grammar name), one per line");
  app.callback([c] { c->run(); });
});

const bool reg_round = register_command("round", "Round numbers read from stdin onto a format's grid",
                                        [](CLI::App& app) {
  auto c = std::make_shared<RoundCmd>();
  app.add_option("--format", c->format, "Format name (see `flexquant formats`)")->required();
  app.add_option("--mode", c->mode, "Rounding mode: nearest_even (default), nearest_away, toward_zero, up, down, "
                                    "stochastic");
  app.add_option("--seed", c->seed, "Seed of stochastic rounding (default 0); the i-th number uses draw i");
  app.add_option("--scale", c->scale, "Scale of the grid (default 1): values round onto scale * levels");
  app.callback([c] { c->run(); });
});

}  // namespace
}  // namespace flexquant::cli
