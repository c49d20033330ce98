//! Scalar heads on top of the decoder's final hidden states.
//!
//! - [`ValueHead`]: PPO's critic, one value per token, `V_t = w·h_t + b`.
//!   Weights `value_head.weight [1, hidden]`, `value_head.bias [1]` (OpenRLHF's critic name).
//! - [`RewardHead`]: the reward model's score, read at the last real token of each sequence,
//!   `r(x, y) = w·h_last`. Weight `score.weight [1, hidden]`, as in Hugging Face's
//!   `LlamaForSequenceClassification` with one label, so a trained reward model loads there too.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::padding;

/// Per-token value estimates for PPO.
#[derive(Debug, Clone)]
pub struct ValueHead {
    linear: Linear,
}

impl ValueHead {
    pub fn new(hidden_size: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let vb = vb.pp("value_head");
        // Zero-initialised, so a fresh critic predicts 0 everywhere instead of noise.
        let weight = vb.get_with_hints((1, hidden_size), "weight", Init::Const(0.0))?;
        let bias = vb.get_with_hints(1, "bias", Init::Const(0.0))?;
        Ok(ValueHead { linear: Linear::new(weight, Some(bias)) })
    }

    /// `hidden: [B, T, H]` → values `[B, T]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.linear.forward(hidden)?.squeeze(D::Minus1)
    }
}

/// Sequence-level reward read at the last non-padding token.
#[derive(Debug, Clone)]
pub struct RewardHead {
    linear: Linear,
}

impl RewardHead {
    pub fn new(hidden_size: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let init = Init::Randn { mean: 0.0, stdev: 1.0 / (hidden_size as f64).sqrt() };
        let weight = vb.pp("score").get_with_hints((1, hidden_size), "weight", init)?;
        Ok(RewardHead { linear: Linear::new(weight, None) })
    }

    /// `hidden: [B, T, H]`, `attention_mask: [B, T]` (1 = real token, padding on either side)
    /// → rewards `[B]`.
    pub fn forward(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let last = padding::last_real_index(&padding::mask_rows(attention_mask)?)?;
        let index = padding::grid_index(&last, t, hidden.device())?;
        self.score(&hidden.reshape((b * t, h))?.index_select(&index, 0)?)
    }

    /// Rewards `[B]` from the final hidden states at the last real tokens, `[B, hidden]`
    /// ([`crate::Llama::last_hidden_states`]).
    pub fn score(&self, last_hidden: &Tensor) -> Result<Tensor> {
        self.linear.forward(last_hidden)?.squeeze(D::Minus1)
    }
}
