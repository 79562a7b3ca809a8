// Recipe JSON reader (src/engine/recipe.cpp): Recipe::from_json_text, then the resolved recipe written back and
// its weight/activation grids built (what every run does next).
#include "flexquant/recipe.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { fqfuzz::init(); return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fqfuzz::run([&] {
    flexquant::Recipe r = flexquant::Recipe::from_json_text(text, "<fuzz>");
    flexquant::Recipe::from_json_text(r.to_json(), "<fuzz, written back>");
    r.weight_spec();
    r.act_spec(flexquant::SiteRole::Activation);
  });
  return 0;
}
