// Recipe: every setting of a quantization run, declared once. visit() lists each field with its key, help
// and allowed range; the JSON reader/writer, the CLI flags (--weight.bits ...), validation and docs/recipe.md
// are all generated from it, so they cannot drift.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "flexquant/adapter.h"
#include "flexquant/rounder.h"

namespace flexquant {

struct Recipe {
  int version = 1;                     // recipe format version; newer majors are refused
  std::string method = "flexround";    // a registered method (method_names())
  uint64_t seed = 1005;                // drives sampling, QDrop masks and LRQ init

  // weights
  int weight_bits = 4;
  std::string weight_format = "int";          // int (integers at weight_bits) | a minifloat / power format name
  std::string weight_granularity = "tensor";  // tensor | channel | group
  int64_t weight_group_size = 128;
  bool weight_symmetric = true;
  std::string weight_init = "mse";            // mse | minmax | signed
  std::string weight_scale_dtype = "fp32";    // fp32 | fp16 | kquant (GGUF block types)
  int first_last_bits = 8;                    // CNN stem and classifier; 0 = same as weight_bits
  std::string weight_mix;                     // "" | a GGUF per-tensor type mix (gguf_mixes(): q4_k_m, q5_k_m)

  // activations
  int act_bits = 32;                          // 32 = not quantized
  std::string act_format = "int";             // int (integers at act.bits) | a minifloat / power format name
  bool act_per_token = false;                 // dynamic per-token (LLM) instead of static per-tensor LSQ
  double act_lr = 4e-5;                       // LSQ step learning rate
  int kv_bits = 32;                           // LLM k/v cache bits; 32 = off

  // block reconstruction
  std::string recon_unit = "block";           // block | layer
  int64_t iters = 5000;
  int64_t batch = 32;
  double lr = 3e-3;                           // learning rate of the rounding parameters
  std::string lr_schedule = "cosine";         // cosine | constant
  double qdrop = 0.0;                         // probability of keeping FP at each dropped site (0 = off, 0.5 = QDrop)
  bool dynamic_acts_in_loop = false;          // per-token quantizers on while training (released LLM code: off)
  double pd_weight = 0.0;                     // PD-Quant prediction-difference loss weight (1/lambda_r); 0 = off
  double pd_temperature = 4.0;                // its softmax temperature T
  int64_t dc_iters = 0;                       // PD-Quant distribution correction: Adam steps per batch; 0 = off
  double dc_lr = 1e-3;                        // its learning rate
  double dc_lambda = 0.02;                    // its constraint divisor lambda_c
  RounderOptions rounder;

  // calibration
  int64_t calib_samples = 1024;               // images or sequences
  int64_t calib_seq_len = 256;                // LLM tokens per calibration sequence

  // SmoothQuant pre-pass (any method)
  double smooth_alpha = 0.0;                  // SmoothQuant migration strength; 0 = off
  // Data-free quantization's two parts (CNNs, any method)
  int cle_iters = 0;                          // cross-layer equalization sweeps before quantizing; 0 = off
  bool bias_correction = false;               // each layer's bias absorbs the mean output shift of its rounding
  // Mixed precision (any method on integer grids)
  std::string mixed_bits;                     // candidate widths "2,3,4"; "" = uniform weight.bits
  double mixed_budget = 0;                    // average bits of the hidden layers' weights

  /// Throws ConfigError naming the field, the value and the allowed range.
  void validate() const;
  static Recipe from_json_text(const std::string& text, const std::string& origin = "<string>");
  static Recipe from_file(const std::string& path);
  std::string to_json(int indent = 2) const;
  /// Applies "key=value" overrides (keys as in JSON, dotted).
  void set(const std::string& key, const std::string& value);
  /// The weight grid of a layer; bits_override > 0 gives an integer grid of that width (first/last layers).
  WeightQuantSpec weight_spec(int bits_override = 0) const;
  /// The activation quantizer of a site with this role; bits >= 32 means the site stays FP.
  ActQuantSpec act_spec(SiteRole role) const;
};

/// One field description, as produced by describe_recipe().
struct RecipeField {
  std::string key, type, help, default_value;
};
std::vector<RecipeField> describe_recipe();
/// Markdown table of every field (docs/recipe.md is this output).
std::string recipe_markdown();
/// Markdown table of the registered methods and what each needs (part of recipe_markdown()).
std::string methods_markdown();

/// The visitor: v(key, field, help) for every field, in documentation order.
template <typename V>
void visit(Recipe& r, V&& v) {
  v("version", r.version, "Recipe format version (1).");
  v("method", r.method, "Weight method: a registered method (the Methods table below; `flexquant recipe --methods`).");
  v("seed", r.seed, "Seed for sampling, QDrop masks and initialisation.");
  v("weight.bits", r.weight_bits, "Weight bits of the integer grid, 2..8.");
  v("weight.format", r.weight_format, "Weight grid: int (integers at weight.bits) or a minifloat / power format of at most 8 bits (fp8_e4m3, fp8_e5m2, fp6_e3m2, fp6_e2m3, fp4_e2m1, pow4_a0.5, ...; `flexquant formats` lists them), which needs weight.symmetric=true. The first/last-layer override stays integer.");
  v("weight.granularity", r.weight_granularity, "Weight scale sharing: tensor | channel | group.");
  v("weight.group_size", r.weight_group_size, "Group size along the input dim (granularity=group), capped at the row length.");
  v("weight.symmetric", r.weight_symmetric, "Symmetric grid (no zero point) instead of asymmetric.");
  v("weight.init", r.weight_init, "Initial grid: mse (L2.4 search) | minmax | signed (symmetric integers: per group the scale max|w|/2^(b-1) with the extra level on the side of the largest magnitude, as llama.cpp's Q4_0/Q5_0/Q8_0 round; written to GGUF as a negative block scale where it is positive).");
  v("weight.scale_dtype", r.weight_scale_dtype, "How scales are stored: fp32 | fp16 | kquant. fp16 rounds every scale, initial and learned, to half before use, as GGUF's Q4_0/Q5_0/Q8_0 blocks store it (the first/last-layer override too); with weight.symmetric=false the zero point becomes a half-precision minimum, fixed at the initial grid, as Q4_1/Q5_1 store it (value = scale * code - offset). kquant is llama.cpp's k-quant grid: integer group scales (and mins) under fp16 super-scales per 256 weights, started from llama.cpp's own search; with weight.bits=2 group_size=16 asymmetric it is Q2_K, 3/16/symmetric Q3_K, 4 or 5/32/asymmetric Q4_K or Q5_K, 6/16/symmetric Q6_K.");
  v("weight.first_last_bits", r.first_last_bits, "Bits of a CNN's first and last layer (and the last layer's input); 0 = weight.bits.");
  v("weight.mix", r.weight_mix, "A llama.cpp-style per-tensor GGUF type mix for Llama models: \"\" (one grid from the weight.* keys) | q4_k_m | q5_k_m. q4_k_m: every layer on Q4_K's grid but attn_v and ffn_down of the first and last eighth of the layers and every third one between (llama.cpp's use_more_bits) on Q6_K's; q5_k_m the same on Q5_K. Rows that fit no 256-weight super-block fall back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Replaces the other weight.* grid keys but weight.init.");
  v("act.bits", r.act_bits, "Activation bits, 2..16; 32 = activations stay FP.");
  v("act.format", r.act_format, "Activation grid: int (integers at act.bits) or a minifloat / power format of at most 8 bits (fp8_e4m3, fp8_e5m2, fp6_e3m2, fp4_e2m1, ...), symmetric with an LSQ-learned scale; KV-cache sites and a classifier's input kept at weight.first_last_bits stay integer.");
  v("act.per_token", r.act_per_token, "Dynamic per-token min/max activations instead of static per-tensor LSQ.");
  v("act.lr", r.act_lr, "Adam learning rate of the LSQ activation steps.");
  v("act.kv_bits", r.kv_bits, "LLM key/value cache bits (per token); 32 = off.");
  v("recon.unit", r.recon_unit, "Reconstruction unit: block (BRECQ) | layer.");
  v("recon.iters", r.iters, "Adam iterations per unit.");
  v("recon.batch", r.batch, "Calibration samples per iteration (drawn with replacement).");
  v("recon.lr", r.lr, "Adam learning rate of the rounding parameters.");
  v("recon.lr_schedule", r.lr_schedule, "cosine (to 0 over recon.iters) | constant.");
  v("recon.qdrop", r.qdrop, "QDrop probability of keeping FP values at unit inputs and activation sites; 0 = off.");
  v("pd.weight", r.pd_weight, "PD-Quant's prediction-difference loss (methods.md §4a): each training step also runs the unit's output on purely quantized inputs through the rest of the FP model and adds this weight times KL(softmax(z_fp/T) || softmax(z_q/T)) (batch mean; per token for language models) to the block loss. 10 = the paper's 1/lambda_r; 0 = off. Block reconstruction only.");
  v("pd.temperature", r.pd_temperature, "PD-Quant's softmax temperature T (the paper: 4 for ResNets, 1 for MobileNetV2).");
  v("pd.dc_iters", r.dc_iters, "PD-Quant's distribution correction (methods.md §4b): before each unit with folded BatchNorms, its FP input is corrected per batch of recon.batch samples by this many Adam steps so that every BatchNorm input's per-sample channel means and stds approach the BatchNorm's running statistics (plus an l2 constraint to the original, divided by pd.dc_lambda); the corrected input gives the unit's target and is QDrop's FP partner. 500 = the paper; 0 = off. Needs a model whose BatchNorms the loader folded (safetensors CNNs; ONNX files that still hold BatchNormalization nodes). Block reconstruction only; works with or without pd.weight.");
  v("pd.dc_lr", r.dc_lr, "Adam learning rate of the distribution correction (lowered tenfold on 100-step plateaus, to 1e-5 at least).");
  v("pd.dc_lambda", r.dc_lambda, "Distribution correction's lambda_c: the l2 constraint to the original input is divided by it (the paper: 0.02 ResNet, 0.005 MobileNetV2).");
  v("recon.dynamic_acts_in_loop", r.dynamic_acts_in_loop, "Keep dynamic per-token (and KV) activation quantizers on while training; off = weight-only reconstruction, as FlexRound's released W4A8 code.");
  v("adaround.lambda", r.rounder.adaround_lambda, "AdaRound rounding-regulariser weight.");
  v("adaround.warmup", r.rounder.adaround_warmup, "Fraction of iterations before the regulariser starts.");
  v("adaround.beta_start", r.rounder.adaround_beta_start, "Regulariser beta at the end of warm-up.");
  v("adaround.beta_end", r.rounder.adaround_beta_end, "Regulariser beta at the last iteration.");
  v("flexround.learn_s1", r.rounder.flexround_learn_s1, "Learn the common grid s1 jointly with the divisors.");
  v("flexround.s3", r.rounder.flexround_s3, "Learn the per-output-channel divisor s3.");
  v("flexround.s4", r.rounder.flexround_s4, "Learn the per-input-channel divisor s4 (convolutions).");
  v("flexround.min_as_zero_point", r.rounder.flexround_min_as_zero_point, "Grids with a stored minimum m (GGUF Q4_1/Q5_1, weight.scale_dtype=fp16 asymmetric): 1 = round w/S + m/s1, so the learned divisors scale the weight itself and m/s1 is a fractional zero point; 0 = round (w + m)/S as ggml does, so they scale the distance from the block's minimum.");
  v("lrq.rank", r.rounder.lrq_rank, "Rank of LRQ's low-rank S2.");
  v("calib.samples", r.calib_samples, "Calibration images or sequences.");
  v("calib.seq_len", r.calib_seq_len, "Tokens per calibration sequence (language models).");
  v("gptq.damp", r.rounder.gptq_damp, "GPTQ damping as a fraction of the mean Hessian diagonal.");
  v("gptq.act_order", r.rounder.gptq_act_order, "GPTQ: quantize columns in order of decreasing Hessian diagonal.");
  v("gptq.block_size", r.rounder.gptq_block_size, "GPTQ lazy-update block size.");
  v("smoothquant.alpha", r.smooth_alpha, "SmoothQuant migration strength in (0,1]; 0 = off.");
  v("cle.iters", r.cle_iters, "Cross-layer equalization (DFQ) before quantizing: sweeps over the layer pairs the model joins by a ReLU(6) (CNNs); 0 = off.");
  v("mixed.bits", r.mixed_bits, "Mixed precision: candidate weight widths, e.g. \"2,3,4\" (integer grids; \"\" = uniform weight.bits). Each hidden layer gets the width a measured sensitivity and mixed.budget choose; first/last layers keep weight.first_last_bits.");
  v("mixed.budget", r.mixed_budget, "Mixed precision: the hidden layers' weights average at most this many bits (e.g. 3.0).");
  v("bias_correction.enabled", r.bias_correction, "Empirical bias correction (DFQ): after a unit is quantized, each layer's bias absorbs the per-channel mean output shift its weight rounding causes on the calibration inputs (layers with a bias).");
  // Sections of methods registered with options of their own (MethodInfo::options), at their defaults until set.
  for (const MethodInfo& m : methods())
    for (const MethodOption& o : m.options) v(o.key.c_str(), r.rounder.extra.emplace(o.key, o.default_value).first->second, o.help.c_str());
}

}  // namespace flexquant
