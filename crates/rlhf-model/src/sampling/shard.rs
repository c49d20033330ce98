//! A slice of a sampling batch's rows with its own KV cache, so that slices decode side by side.
//!
//! A decode step of a small model is a few hundred tiny ops. Spread over threads op by op (how
//! candle and gemm parallelise), every op pays a thread hand-off that costs more than its work:
//! with the thread count fixed, two threads still decoded the bench model at 3,400 new tokens/s
//! against one thread's 4,200 (7,800 now). Splitting the batch instead gives each thread
//! whole steps of its own rows and one hand-off per step. Every shard is padded to the batch's
//! width and its rows go through the same kernels as in one batch, and the caller draws tokens
//! in row order from one random stream, so the tokens drawn do not depend on how many shards
//! there are.

use std::ops::Range;

use candle_core::{DType, Result, Tensor};

use crate::llama::{Kernels, KvCache, Llama};
use crate::padding;

/// Contiguous, near-equal ranges covering `0..batch`, at most `parts` of them, none empty.
pub(super) fn split(batch: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, batch.max(1));
    (0..parts).map(|i| i * batch / parts..(i + 1) * batch / parts).filter(|r| !r.is_empty()).collect()
}

pub(super) struct Shard {
    /// The batch rows this shard decodes.
    pub(super) rows: Range<usize>,
    key_mask: Vec<Vec<bool>>,
    next_position: Vec<u32>,
    cache: KvCache,
}

impl Shard {
    /// Runs `prompts` (this shard's rows, left-padded to `width`) through the model; returns the
    /// shard and each row's next-token logits.
    pub(super) fn prefill(
        model: &Llama,
        rows: Range<usize>,
        prompts: &[Vec<u32>],
        width: usize,
        capacity: usize,
        pad_id: u32,
    ) -> Result<(Shard, Vec<Vec<f32>>)> {
        let device = model.device();
        let key_mask: Vec<Vec<bool>> = prompts
            .iter()
            .map(|p| std::iter::repeat_n(false, width - p.len()).chain(std::iter::repeat_n(true, p.len())).collect())
            .collect();
        let ids: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(pad_id, width - p.len()).chain(p.iter().copied()))
            .collect();
        let next_position = prompts.iter().map(|p| p.len() as u32).collect();
        let mut cache = KvCache::new(model.config().num_hidden_layers, capacity);
        let input = Tensor::from_vec(ids, (prompts.len(), width), device)?;
        let bias = padding::attention_bias(&key_mask, width, device)?;
        let hidden =
            model.forward_positions(&input, &padding::positions(&key_mask), &bias, Some(&mut cache), Kernels::Fused)?;
        let logits = model.lm_head(&hidden.narrow(1, width - 1, 1)?.squeeze(1)?)?;
        let shard = Shard { rows, key_mask, next_position, cache };
        Ok((shard, logits.to_dtype(DType::F32)?.to_vec2()?))
    }

    /// Feeds one token per row (`next`, this shard's rows); returns the logits that follow.
    pub(super) fn step(&mut self, model: &Llama, next: &[u32]) -> Result<Vec<Vec<f32>>> {
        let device = model.device();
        for row in &mut self.key_mask {
            row.push(true);
        }
        let positions: Vec<Vec<u32>> = self.next_position.iter().map(|&p| vec![p]).collect();
        self.next_position.iter_mut().for_each(|p| *p += 1);
        let input = Tensor::from_vec(next.to_vec(), (next.len(), 1), device)?;
        let bias = padding::attention_bias(&self.key_mask, 1, device)?;
        let hidden = model.forward_positions(&input, &positions, &bias, Some(&mut self.cache), Kernels::Fused)?;
        model.lm_head(&hidden.squeeze(1)?)?.to_dtype(DType::F32)?.to_vec2()
    }
}
