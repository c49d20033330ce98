//! The final hidden state at one position per row, the last real token, which is all a reward
//! model reads. Every layer but the last runs over all positions; the last one computes keys and
//! values everywhere (the scored token attends to them) but its query, attention, output
//! projection and MLP only at the scored positions. The values are [`Llama::hidden_states`]'s
//! read there; the work skipped is most of one layer (a fifth of the bench's 4-layer reward-model
//! step), which `transformers`' `*ForSequenceClassification` does for every position and throws
//! away.

use candle_core::{Result, Tensor};

use super::{Kernels, Llama, Rotary};
use crate::padding;

impl Llama {
    /// Final hidden states `[B, hidden]` at the last real token of each row (padding on either
    /// side), as [`crate::RewardHead::score`] reads them: [`Llama::hidden_states`] there, without
    /// the last layer's work at the other positions.
    pub fn last_hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, kernels: Kernels) -> Result<Tensor> {
        self.last_from(self.embed_tokens.forward(input_ids)?, attention_mask, 0, kernels)
    }

    /// [`Llama::upper_hidden_states`] read at the last real token of each row, `[B, hidden]`:
    /// the layers from `from` on over the cached output of the frozen ones below.
    pub fn upper_last_hidden_states(
        &self,
        lower: &Tensor,
        attention_mask: &Tensor,
        from: usize,
        kernels: Kernels,
    ) -> Result<Tensor> {
        self.last_from(lower.clone(), attention_mask, from, kernels)
    }

    fn last_from(&self, h: Tensor, attention_mask: &Tensor, from: usize, kernels: Kernels) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let mask = padding::mask_rows(attention_mask)?;
        let last = padding::last_real_index(&mask)?;
        let index = padding::grid_index(&last, t, h.device())?;
        // `[B, T, C]` → `[B, 1, C]` at the scored positions.
        let gather = |x: &Tensor| -> Result<Tensor> { x.flatten_to(1)?.index_select(&index, 0)?.unsqueeze(1) };
        let layers = self.layers.len();
        let h = if from >= layers {
            gather(&h)?
        } else {
            crate::compute_pool::on_compute_pool(|| -> Result<Tensor> {
                let positions = padding::positions(&mask);
                let bias = padding::attention_bias(&mask, t, h.device())?.to_dtype(h.dtype())?;
                let rotary = Rotary::new(&self.config, &positions, h.dtype(), h.device())?;
                let h = self.layers_with(h, &rotary, &bias, from..layers - 1, None, kernels)?;
                let layer = &self.layers[layers - 1];
                let attn_in = layer.input_layernorm.forward(&h, kernels)?;
                let (k, v) = layer.self_attn.keys_values(&attn_in, &rotary, kernels)?;
                let scored: Vec<Vec<u32>> = positions.iter().zip(&last).map(|(row, &i)| vec![row[i]]).collect();
                let scored_rotary = Rotary::new(&self.config, &scored, h.dtype(), h.device())?;
                // The scored queries' rows of the bias, `[B, 1, 1, T]`.
                let scored_bias = bias.squeeze(1)?.flatten_to(1)?.index_select(&index, 0)?.reshape((b, 1, 1, t))?;
                let attended =
                    layer.self_attn.attend(&gather(&attn_in)?, &scored_rotary, &k, &v, &scored_bias, false, kernels)?;
                layer.mlp_block(&(gather(&h)? + attended)?, kernels)
            })?
        };
        self.norm.forward(&h, kernels)?.squeeze(1)
    }
}
