// Binds every Recipe key to a CLI flag (--weight.bits 4 ...) by walking visit(), plus --recipe and --set.
#pragma once
#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flexquant/recipe.h"

namespace flexquant::cli {

struct RecipeFlags {
  std::vector<std::string> recipe_files;
  std::vector<std::string> sets;  // key=value
  std::map<std::string, std::string> values;  // flags given as --key value

  /// Adds --recipe, --set and one flag per recipe key to `app`.
  void add_to(CLI::App& app, bool multiple_recipes = false);
  /// Defaults < each recipe file < --set < per-key flags. With several recipe files, one Recipe each.
  std::vector<Recipe> resolve() const;
};

}  // namespace flexquant::cli
