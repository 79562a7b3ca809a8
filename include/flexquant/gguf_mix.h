// llama.cpp-style per-tensor type mixes (Q4_K_M, Q5_K_M): which GGUF type, and so which flexquant grid, each
// layer of a llama model gets. Recipes name a mix (weight.mix); the engine asks it for per-layer grids and the
// GGUF export for per-tensor types, so both use the same assignment.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/ggml_types.h"

namespace flexquant {

/// llama.cpp-style per-tensor type mixes by name ("q4_k_m", "q5_k_m").
std::vector<std::string> gguf_mixes();
/// The base type of a mix (Q4_K for q4_k_m); ConfigError listing the mixes for an unknown name.
GgmlType gguf_mix_base(const std::string& mix);
/// The type of every quantizable layer of a llama `model` (adapter layer name -> type) under `mix`: attn_v and
/// ffn_down of the layers llama.cpp's use_more_bits picks get Q6_K, the rest the base type; a row that fits no
/// 256-weight super-block falls back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). ConfigError for a model whose layers have no GGUF names.
std::map<std::string, GgmlType> gguf_mix_types(const std::string& mix, ModelAdapter& model);

}  // namespace flexquant
