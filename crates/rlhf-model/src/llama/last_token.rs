//! The final hidden states only where they are read: at the last real token of each row (all a
//! reward model reads), or in a band of columns (the response part of a PPO batch, all the
//! policy's log-probs and the critic's values read). Every layer but the last runs over all
//! positions; the last one computes keys and values everywhere (the read positions attend to
//! them) but its query, attention, output projection and MLP only at the read positions. The
//! values are [`Llama::hidden_states`]'s read there; the work skipped is most of one layer at the
//! other positions (a fifth of the bench's 4-layer reward-model step), which `transformers`'
//! `*ForSequenceClassification` and TRL's PPO forward passes do and throw away.

use std::ops::Range;

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

    /// [`Llama::hidden_states`] in grid `columns` only, `[B, columns.len(), hidden]`, without the
    /// last layer's work in the other columns.
    pub fn hidden_states_in(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        columns: Range<usize>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let t = input_ids.dim(1)?;
        if columns.start > columns.end || columns.end > t {
            candle_core::bail!("hidden_states_in: columns {columns:?} outside a grid {t} wide");
        }
        let h = self.embed_tokens.forward(input_ids)?;
        if columns.is_empty() {
            return h.narrow(1, 0, 0);
        }
        let mask = padding::mask_rows(attention_mask)?;
        let read: Vec<Vec<u32>> = padding::positions(&mask).iter().map(|row| row[columns.clone()].to_vec()).collect();
        let band = |x: &Tensor| x.narrow(1, columns.start, columns.len())?.contiguous();
        self.upper_at(h, &mask, 0, &band, read, kernels)
    }

    fn last_from(&self, h: Tensor, attention_mask: &Tensor, from: usize, kernels: Kernels) -> Result<Tensor> {
        let t = h.dim(1)?;
        let mask = padding::mask_rows(attention_mask)?;
        let last = padding::last_real_index(&mask)?;
        let index = padding::grid_index(&last, t, h.device())?;
        let read: Vec<Vec<u32>> = padding::positions(&mask).iter().zip(&last).map(|(row, &i)| vec![row[i]]).collect();
        // `[B, T, X]` → `[B, 1, X]` at the scored positions.
        let gather = |x: &Tensor| -> Result<Tensor> { x.flatten_to(1)?.index_select(&index, 0)?.unsqueeze(1) };
        self.upper_at(h, &mask, from, &gather, read, kernels)?.squeeze(1)
    }

    /// The layers from `from` on over the residual stream `h: [B, T, C]`, and the final norm, at
    /// the positions `select` picks (`[B, T, X]` → `[B, Tq, X]`, the same in every row's terms),
    /// whose rotary positions are `read` (`[B][Tq]`): `[B, Tq, C]`.
    fn upper_at(
        &self,
        h: Tensor,
        mask: &[Vec<bool>],
        from: usize,
        select: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
        read: Vec<Vec<u32>>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let t = h.dim(1)?;
        let layers = self.layers.len();
        let h = if from >= layers {
            select(&h)?
        } else {
            crate::compute_pool::on_compute_pool(|| -> Result<Tensor> {
                let positions = padding::positions(mask);
                let bias = padding::attention_bias(mask, t, h.device())?.to_dtype(h.dtype())?;
                let rotary = Rotary::new(&self.config, &positions, h.dtype(), h.device())?;
                let h = self.layers_with(h, &rotary, &bias, from..layers - 1, None, kernels)?;
                let layer = &self.layers[layers - 1];
                let attn_in = layer.input_layernorm.forward(&h, kernels)?;
                let (k, v) = layer.self_attn.keys_values(&attn_in, &rotary, kernels)?;
                let read_rotary = Rotary::new(&self.config, &read, h.dtype(), h.device())?;
                // The read queries' rows of the bias, `[B, 1, Tq, T]`.
                let read_bias = select(&bias.squeeze(1)?)?.unsqueeze(1)?.contiguous()?;
                let attended =
                    layer.self_attn.attend(&select(&attn_in)?, &read_rotary, &k, &v, &read_bias, false, kernels)?;
                layer.mlp_block(&(select(&h)? + attended)?, kernels)
            })?
        };
        self.norm.forward(&h, kernels)
    }
}
