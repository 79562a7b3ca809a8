// `flexquant sweep`: the precision sweep of include/flexquant/sweep.h, printed as a table, optionally written as
// CSV / markdown and plotted to a PNG with gnuplot.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "commands.h"
#include "flexquant/error.h"
#include "flexquant/runtime.h"
#include "flexquant/sweep.h"
#include "workload_flags.h"

namespace flexquant::cli {
namespace {
namespace fs = std::filesystem;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  FQ_CHECK(f.good(), IoError, "cannot write \"", path, "\" -> check that its folder exists and is writable");
}

// The fp32-range points (sbits<k>, bf16) as gnuplot data: k, then metric and W1 for each mode.
std::string plot_data(const SweepReport& r, const std::vector<RoundingMode>& modes) {
  std::map<int, std::map<RoundingMode, const SweepPoint*>, std::greater<>> rows;
  for (const SweepPoint& p : r.points)
    if (p.fp32_range) rows[p.significand_bits][p.mode] = &p;
  std::string out;
  for (const auto& [k, by_mode] : rows) {
    out += std::to_string(k);
    for (RoundingMode m : modes) {
      auto it = by_mode.find(m);
      out += it == by_mode.end() ? " NaN NaN" : fmt::format(" {:.6g} {:.6g}", it->second->metric, it->second->w1);
    }
    out += "\n";
  }
  return out;
}

void plot(const SweepReport& r, const std::vector<RoundingMode>& modes, const std::string& png) {
  FQ_CHECK(std::system("command -v gnuplot >/dev/null 2>&1") == 0, ConfigError,
           "--plot needs gnuplot, which is not installed -> apt-get install gnuplot-nox (scripts/setup.sh does), or "
           "drop --plot (the table and --csv are written without it)");
  FQ_CHECK(!r.points.empty() && plot_data(r, modes).size() > 0, ConfigError,
           "--plot draws the fp32-range formats (sbits<k>, bf16); this sweep ran none -> add some to --formats");
  const std::string dat = png + ".dat", gp = png + ".gp";
  write_file(dat, plot_data(r, modes));
  std::string metric_lines, w1_lines;
  for (size_t i = 0; i < modes.size(); ++i) {
    const std::string name = rounding_mode_name(modes[i]);
    metric_lines += fmt::format("{}'{}' using 1:{} with linespoints title '{}'", i ? ", " : "", dat, 2 + 2 * i, name);
    w1_lines += fmt::format("{}'{}' using 1:{} with linespoints title '{}'", i ? ", " : "", dat, 3 + 2 * i, name);
  }
  write_file(gp, fmt::format(
      "set terminal pngcairo size 900,800 noenhanced\nset format y '%g'\nset output '{}'\nset multiplot layout 2,1\nset grid\n"
      "set xlabel 'significand bits k (fp32 with k fraction bits)'\nset xrange [24:0]\n"
      "set ylabel '{}'\nset title 'FP32: {:.4g}'\nplot {}, {} with lines dashtype 2 title 'FP32'\n"
      "set logscale y\nset ylabel 'W1 to FP32 ({})'\nset title ''\nplot {}\nunset multiplot\n",
      png, r.metric_name, r.fp_metric, metric_lines, r.fp_metric, r.outputs, w1_lines));
  FQ_CHECK(std::system(fmt::format("gnuplot '{}'", gp).c_str()) == 0, IoError, "gnuplot failed on \"", gp,
           "\" -> run it by hand to see why; the data are in ", dat);
  fs::remove(gp);
}

struct SweepCmd {
  Workload w;
  std::string formats, modes = "nearest_even,stochastic", csv, markdown, png;
  uint64_t seed = 0;
  bool weights_only = false, activations_only = false;

  SweepOptions options() const {
    SweepOptions o;
    if (!formats.empty()) {
      o.formats.clear();
      for (const std::string& f : split_list(formats)) o.formats.push_back(Format::parse(f));
    }
    o.modes.clear();
    for (const std::string& m : split_list(modes)) o.modes.push_back(parse_rounding_mode(m));
    FQ_CHECK(!(weights_only && activations_only), ConfigError,
             "--weights-only and --activations-only exclude each other -> give at most one");
    o.weights = !activations_only;
    o.activations = !weights_only;
    o.seed = seed;
    return o;
  }
  void run() const {
    const SweepOptions o = options();
    for (const std::string& p : {csv, markdown, png})
      if (!p.empty()) write_file(p, "");  // fail on an unwritable path before the long run
    auto task = make_task(w);
    std::cout << "flexquant:  " << version() << " built from " << build_commit() << ", " << at::get_num_threads()
              << " threads\n";
    std::cout << "evaluation: " << task->evaluation_description() << "\n";
    std::cout << "rounded:    " << (o.weights ? "every model tensor" : "") << (o.weights && o.activations ? " + " : "")
              << (o.activations ? "every activation" : "") << ", seed " << o.seed << "\n";
    // Points reach the CSV as they finish, so an interrupted or failed sweep keeps them.
    std::ofstream partial;
    if (!csv.empty()) {
      partial.open(csv);
      partial << sweep_csv_header();
    }
    const SweepReport r = precision_sweep(
        *task, o, [](const std::string& line) { std::cerr << line << std::endl; },
        [&](const SweepPoint& p) { partial << sweep_csv_line(p) << std::flush; });
    partial.close();
    const std::string table = sweep_table(r);
    std::cout << "\n" << table;
    if (!csv.empty()) write_file(csv, sweep_csv(r));  // the whole file, FP32 row and header first
    if (!markdown.empty()) write_file(markdown, table);
    if (!png.empty()) {
      plot(r, o.modes, png);
      std::cout << "plot: " << png << "\n";
    }
  }
};

const bool reg_sweep = register_command(
    "sweep", "Run a model with every tensor rounded to k significand bits / minifloats; metric and W1 per format",
    [](CLI::App& app) {
      auto c = std::make_shared<SweepCmd>();
      add_workload(app, c->w);
      app.add_option("--formats", c->formats,
                     "Comma-separated formats (default: sbits23..sbits2, fp16, bf16, fp8_e4m3, fp8_e5m2, fp6_e2m3, "
                     "fp6_e3m2, fp4_e2m1)");
      app.add_option("--modes", c->modes, "Comma-separated rounding modes (default nearest_even,stochastic)");
      app.add_option("--seed", c->seed, "Stochastic rounding seed (default 0)");
      app.add_flag("--weights-only", c->weights_only, "Round only the model's tensors");
      app.add_flag("--activations-only", c->activations_only, "Round only the activations");
      app.add_option("--csv", c->csv, "Also write every point as CSV");
      app.add_option("--markdown", c->markdown, "Also write the table as markdown");
      app.add_option("--plot", c->png, "Also plot metric and W1 against k to this PNG (needs gnuplot)");
      app.callback([c] { c->run(); });
    });

}  // namespace
}  // namespace flexquant::cli
