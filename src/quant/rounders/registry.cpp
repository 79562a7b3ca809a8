// Rounder registry: name -> factory. The built-ins are inserted when the registry is first used (a static
// registrar in a static library would be dropped by the linker); register_rounder() adds more.
#include <map>
#include <mutex>

#include "flexquant/error.h"
#include "rounders.h"

namespace flexquant {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, RounderFactory> factories;
  Registry() {
    factories["rtn"] = rounders::make_rtn;
    factories["adaround"] = rounders::make_adaround;
    factories["flexround"] = rounders::make_flexround;
    factories["lrq"] = rounders::make_lrq;
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

torch::Tensor Rounder::regularizer(int64_t, int64_t) { return torch::zeros({}); }

std::vector<std::string> rounder_names() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

void register_rounder(const std::string& name, RounderFactory factory) {
  FQ_CHECK(!name.empty() && factory, ConfigError, "register_rounder needs a name and a factory");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.factories[name] = std::move(factory);
}

std::unique_ptr<Rounder> make_rounder(const std::string& name, const RounderOptions& opts) {
  RounderFactory f;
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(name);
    if (it != r.factories.end()) f = it->second;
  }
  if (!f) {
    std::string list;
    for (auto& n : rounder_names()) list += (list.empty() ? "" : " | ") + n;
    throw ConfigError("rounder \"" + name + "\" is not known -> allowed: " + list +
                      " -> hint: set method to one of these (gptq is not a rounder)");
  }
  return f(opts);
}

}  // namespace flexquant
