// Helpers for the hand-fused CPU kernels (attention, LSQ, FlexRound, Adam).
// FQ_VECTOR_CLONES marks a hot loop function for a second, AVX2+FMA (x86-64-v3) build picked at run time by CPU
// features (GCC target_clones + ifunc on x86-64 Linux); elsewhere it is empty and the function is built once.
// "arch=haswell" would pick by CPU model and miss every AMD CPU.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FQ_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FQ_VECTOR_CLONES
#endif
#define FQ_INLINE inline __attribute__((always_inline))

namespace flexquant {

/// exp(x) for |x| <= 87 (Cephes expf: 2^n * exp(r), |r| <= ln2/2, degree-6 polynomial; within 2 ulp of libm),
/// branch-free so loops that call it vectorize (build them with -fno-trapping-math). exp(0) is exactly 1; inputs
/// beyond +-87 are clamped there.
FQ_INLINE float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 87.0f ? 87.0f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, sizeof two_n);
  return p * two_n;
}

}  // namespace flexquant
