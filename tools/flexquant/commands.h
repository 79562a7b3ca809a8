// Subcommand registry: each cmd_*.cpp registers itself, so adding a command touches one file.
// Commands only parse flags and call the library; no quantization logic lives here.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace flexquant::cli {

/// setup(sub) adds the subcommand's options and its callback; the callback may throw flexquant::Error.
bool register_command(const std::string& name, const std::string& help, std::function<void(CLI::App&)> setup);

}  // namespace flexquant::cli
