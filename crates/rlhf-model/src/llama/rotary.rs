//! Rotary position embeddings (RoPE) for one forward pass, at each row's own positions.

use candle_core::{D, DType, Device, Result, Tensor};

use super::Kernels;
use crate::config::Config;

/// Per-row rotary tables for one forward pass: `[B, T, head_dim / 2]` each.
pub(super) struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// The same values for the fused RoPE, where it runs (f32 on the CPU).
    fused: Option<crate::fused::RopeTables>,
}

impl Rotary {
    /// HF Llama convention: `inv_freq_i = theta^(-2i/d)`, rotation by `rotate_half` (non-interleaved).
    pub(super) fn new(cfg: &Config, positions: &[Vec<u32>], dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv_freq: Vec<f64> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64)).collect();
        let (batch, len) = (positions.len(), positions.first().map_or(0, Vec::len));
        // Each position's angles once where rows share positions (training batches: the f64
        // cos and sin of every row's every position were 3% of a reward-model step, on one
        // thread); a decode step's few scattered positions are computed as they come.
        let all = || positions.iter().flatten().map(|&p| p as usize);
        let (first, last) = (all().min().unwrap_or(0), all().max().unwrap_or(0));
        let span = if last + 1 - first <= batch * len { first..last + 1 } else { 0..0 };
        let angles = |p: usize, f: &f64| {
            let angle = p as f64 * f;
            (angle.cos() as f32, angle.sin() as f32)
        };
        let table: Vec<(f32, f32)> = span.clone().flat_map(|p| inv_freq.iter().map(move |f| angles(p, f))).collect();
        let mut cos = Vec::with_capacity(batch * len * half);
        let mut sin = Vec::with_capacity(batch * len * half);
        for p in all() {
            for (i, f) in inv_freq.iter().enumerate() {
                let (c, s) = if span.contains(&p) { table[(p - first) * half + i] } else { angles(p, f) };
                cos.push(c);
                sin.push(s);
            }
        }
        let cos_t = Tensor::from_slice(&cos, (batch, len, half), device)?.to_dtype(dtype)?;
        let sin_t = Tensor::from_slice(&sin, (batch, len, half), device)?.to_dtype(dtype)?;
        let fused = crate::fused::supported(&cos_t).then(|| crate::fused::RopeTables::new(cos, sin));
        Ok(Rotary { cos: cos_t, sin: sin_t, fused })
    }

    /// Rotates `x: [B, H, T, head_dim]`.
    pub(super) fn apply(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        // The same products and sums as candle-nn's rope, so the same bits; candle's CPU loop
        // indexes its tables per element and does not vectorise (5% of a reward-model stage).
        if let (Some(tables), Kernels::Differentiable | Kernels::Fused) = (&self.fused, kernels) {
            return crate::fused::rope_with(x, tables);
        }
        match kernels {
            Kernels::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos, &self.sin),
            Kernels::Differentiable | Kernels::Composite => {
                let cos = Tensor::cat(&[&self.cos, &self.cos], D::Minus1)?.unsqueeze(1)?;
                let sin = Tensor::cat(&[&self.sin, &self.sin], D::Minus1)?.unsqueeze(1)?;
                let half = x.dim(D::Minus1)? / 2;
                let rotated = Tensor::cat(
                    &[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?],
                    D::Minus1,
                )?;
                x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
            }
        }
    }
}
