// Helpers shared by the tests/quant suites.
#pragma once
#include "flexquant/quantizer.h"

namespace flexquant::testing {

inline WeightQuantSpec make_spec(int bits, bool sym, Granularity g, int64_t gs, ScaleInit init) {
  WeightQuantSpec s;
  s.format = int_weight_format(bits);
  s.symmetric = sym;
  s.granularity = g;
  s.group_size = gs;
  s.init = init;
  return s;
}

}  // namespace flexquant::testing
