//! Token log-probabilities and entropy from logits.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::log_softmax;

/// `log π(y_t) = log_softmax(logits_t)[y_t]`.
/// `logits: [B, T, V]`, `targets: [B, T]` (u32) → `[B, T]`. One fused kernel for f32 on the CPU
/// ([`crate::fused_logprobs`]); composite ops otherwise.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if crate::fused::supported(logits) {
        return crate::fused_logprobs::token_logprobs(logits, targets);
    }
    composite_token_logprobs(logits, targets)
}

/// [`token_logprobs`] through candle's composite ops: the reference the fused kernel is tested
/// against.
pub fn composite_token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    logp.gather(&targets.contiguous()?.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)
}

/// Log-probs of every next token of a sequence: logits at position `t` predict token `t + 1`.
/// `logits: [B, T, V]`, `input_ids: [B, T]` → `[B, T - 1]`, where entry `t` is `log π(ids_{t+1})`.
pub fn next_token_logprobs(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let t = input_ids.dim(1)?;
    token_logprobs(&logits.narrow(1, 0, t - 1)?, &input_ids.narrow(1, 1, t - 1)?)
}

/// Entropy of each position's distribution, `H_t = -Σ_v p_v log p_v`.
/// `logits: [B, T, V]` → `[B, T]`. Mask it with [`crate::masked_mean`].
pub fn entropy(logits: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()
}
