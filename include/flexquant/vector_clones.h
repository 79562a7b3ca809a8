// FQ_VECTOR_CLONES marks a hot loop function for a second, AVX2+FMA (x86-64-v3) build picked at run time by CPU
// features (GCC target_clones + ifunc on x86-64 Linux); elsewhere it is empty and the function is built once.
// "arch=haswell" would pick by CPU model and miss every AMD CPU.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FQ_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FQ_VECTOR_CLONES
#endif
