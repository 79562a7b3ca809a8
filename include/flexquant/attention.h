// Rotary position embedding and causal scaled dot-product attention: the decoder layer's
// softmax(Q K^T * scale + causal mask) V with grouped key/value heads. On CPU in float32 it is one fused op (forward and backward), never holding the [T, T] score
// matrix of more than one head: the step of a small model like stories260K (head_dim 8) is bound by the memory
// traffic of those matrices, not by arithmetic. Heads wider than 16, other devices and dtypes take the ATen
// composition below.
#pragma once
#include <torch/types.h>

namespace flexquant {

/// q [B, H, T, hd], k and v [B, Hkv, T, hd] with H a multiple of Hkv (query head h reads kv head h / (H / Hkv))
/// -> [B, H, T, hd]. Differentiable in q, k and v.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale);

/// Rotary position embedding (llama2.c / Meta layout): x [B, T, H, hd] with hd even; the pair (x[2j], x[2j+1]) at
/// position t is rotated by t * theta^(-2j/hd). On CPU in float32 one pass forward and one backward (the inverse
/// rotation) with the cos/sin table cached per (T, hd, theta); the same bits as the reference below.
torch::Tensor rotary_embedding(const torch::Tensor& x, double theta);
/// The reference: angles in float64, cos/sin cast to x's type, the rotation as ATen ops.
torch::Tensor rotary_embedding_reference(const torch::Tensor& x, double theta);

/// The slow, obvious reference: repeat_interleave, a [B, H, T, T] score tensor, masked softmax, matmul (ATen).
torch::Tensor causal_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         double scale);

}  // namespace flexquant
