// CLI --set values (src/engine/recipe.cpp, Recipe::set as tools/flexquant/recipe_flags.cpp calls it): each input
// line is one "key=value" override on the default recipe, then the recipe is validated and its grids built.
#include <sstream>

#include "flexquant/recipe.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  fqfuzz::run([&] {
    flexquant::Recipe r;
    for (std::string line; std::getline(in, line);) {
      const auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      r.set(line.substr(0, eq), line.substr(eq + 1));
    }
    r.validate();
    r.weight_spec();
    r.act_spec(flexquant::SiteRole::Activation);
    flexquant::Recipe::from_json_text(r.to_json(), "<fuzz, written back>");
  });
  return 0;
}
