#include "recipe_flags.h"

#include "flexquant/error.h"

namespace flexquant::cli {

void RecipeFlags::add_to(CLI::App& app, bool multiple_recipes) {
  auto* r = app.add_option("--recipe", recipe_files, multiple_recipes
                                                        ? "Recipe JSON file(s); one result row each (recipes/ has ready ones)"
                                                        : "Recipe JSON file (recipes/ has ready ones)");
  if (!multiple_recipes) r->expected(0, 1);
  else r->delimiter(',');
  app.add_option("--set", sets, "Override a recipe key: --set recon.iters=200 (repeatable)");
  Recipe defaults;
  visit(defaults, [&](const char* key, auto&, const char* help) {
    std::string k = key;
    app.add_option_function<std::string>(
           "--" + k, [this, k](const std::string& v) { values[k] = v; }, help)
        ->group("Recipe keys (override the recipe file)");
  });
}

std::vector<Recipe> RecipeFlags::resolve() const {
  std::vector<Recipe> out;
  auto finish = [&](Recipe r) {
    for (const auto& kv : sets) {
      auto eq = kv.find('=');
      FQ_CHECK(eq != std::string::npos, ConfigError, "--set \"", kv, "\" is not key=value, e.g. --set recon.iters=200");
      r.set(kv.substr(0, eq), kv.substr(eq + 1));
    }
    for (const auto& [k, v] : values) r.set(k, v);
    r.validate();
    out.push_back(r);
  };
  if (recipe_files.empty()) finish(Recipe{});
  for (const auto& f : recipe_files) finish(Recipe::from_file(f));
  return out;
}

}  // namespace flexquant::cli
