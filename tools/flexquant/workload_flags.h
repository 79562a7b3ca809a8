// Flags that name a workload (model, data, splits, image preprocessing), shared by every command that loads one.
#pragma once
#include <CLI/CLI.hpp>

#include "flexquant/pipeline.h"

namespace flexquant::cli {

/// Adds --model, --arch, --data, the split/limit flags and the image preprocessing flags, filling `w`.
void add_workload(CLI::App& app, Workload& w, bool model_required = true);

}  // namespace flexquant::cli
