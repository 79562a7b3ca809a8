// Rounding-mode names and the counter-based random stream of stochastic rounding (splitmix64, Steele, Lea and
// Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; jumped to any position in O(1)).
#include "flexquant/rounding.h"

#include "flexquant/error.h"
#include "round_kernels.h"

namespace flexquant {

const std::vector<std::string>& rounding_mode_names() {
  static const std::vector<std::string> names = {"nearest_even", "nearest_away", "toward_zero",
                                                 "up",           "down",         "stochastic"};
  return names;
}

RoundingMode parse_rounding_mode(const std::string& name) {
  const auto& names = rounding_mode_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<RoundingMode>(i);
  std::string allowed;
  for (const auto& n : names) allowed += (allowed.empty() ? "" : ", ") + n;
  throw ConfigError(detail::concat("rounding mode \"", name, "\" is not valid: allowed are ", allowed,
                                   "; hint: nearest_even is round-to-nearest as in torch::round"));
}

std::string rounding_mode_name(RoundingMode mode) {
  auto i = static_cast<size_t>(mode);
  FQ_INTERNAL_ASSERT(i < rounding_mode_names().size(), "bad RoundingMode ", i);
  return rounding_mode_names()[i];
}

uint64_t random_bits(uint64_t seed, uint64_t index) {
  // The key is the seed passed through the mixer once, so that seeds 0, 1, 2 ... give unrelated streams.
  return detail::splitmix_at(detail::splitmix_key(seed), index);
}

double random_uniform(uint64_t seed, uint64_t index) {
  return static_cast<double>(random_bits(seed, index) >> 11) * 0x1.0p-53;
}

}  // namespace flexquant
