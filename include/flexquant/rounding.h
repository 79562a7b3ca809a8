// Rounding modes and the counter-based random stream used by stochastic rounding.
//
// Names follow CPFloat (nearest_even, nearest_away, toward_zero, up, down, stochastic). Stochastic rounding
// is the "proportional" kind of Paxton et al. (J. Climate 2022, methods.md §9.1): x between neighbouring
// levels a < x < b rounds to b with probability (x - a)/(b - a), so E[SR(x)] = x.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace flexquant {

/// How a value between two neighbouring grid levels is rounded. Values already on the grid are returned
/// unchanged in every mode (stochastic included).
enum class RoundingMode {
  NearestEven,  ///< nearest level; ties to the level whose code is even (IEEE default, torch::round)
  NearestAway,  ///< nearest level; ties away from zero (std::round)
  TowardZero,   ///< the neighbour of smaller magnitude (truncation)
  Up,           ///< the larger neighbour (toward +inf)
  Down,         ///< the smaller neighbour (toward -inf)
  Stochastic,   ///< the larger-magnitude neighbour with probability |x - a| / |b - a|; see random_bits()
};

/// Parses "nearest_even", "nearest_away", "toward_zero", "up", "down", "stochastic".
/// Throws ConfigError naming the valid modes otherwise.
RoundingMode parse_rounding_mode(const std::string& name);
/// The name parse_rounding_mode() accepts.
std::string rounding_mode_name(RoundingMode mode);
/// All mode names, in enum order.
const std::vector<std::string>& rounding_mode_names();

/// The 64 random bits stochastic rounding uses for element `index` (flat, row-major index into the tensor)
/// under `seed`: splitmix64 (Steele et al. 2014) with its state jumped straight to position index + 1 of the
/// stream keyed by the seed. Counter-based, so results depend only on (seed, index): never on the thread
/// count or on how the tensor is split into chunks.
uint64_t random_bits(uint64_t seed, uint64_t index);

/// The uniform draw U in [0, 1) that stochastic rounding compares with the fractional distance:
/// U = (random_bits(seed, index) >> 11) * 2^-53. An element rounds away from zero iff U < frac, where frac
/// is the exact (integer formats, minifloats) or double-precision (power grids) fractional distance.
double random_uniform(uint64_t seed, uint64_t index);

}  // namespace flexquant
