//! Attention's products in mixed precision (operands rounded to bf16, sums in f32), as
//! `torch.autocast` runs them, for models that multiply their projections that way
//! ([`crate::llama::Llama::with_bf16_matmuls`]). The scale, bias, softmax and its backward pass
//! stay f32.
//!
//! Each (sequence, key/value head) is one small product per step, run on one thread while the
//! other threads take other heads; blocks the causal mask zeroes are skipped ([`Visible`]). Left
//! in f32 (candle's gemm), the attention products took 12% of the bf16 PPO update (`perf`).

use rayon::prelude::*;

use super::visible::Visible;
use crate::amx::{BLOCK, MatrixRef, matmul_here};
use crate::fused::{softmax_backward_in_place, softmax_in_place, zeroed};

/// The shapes of one call: sequences of `heads` key/value heads, each with `rows` stacked query
/// rows (`G · tq`) over `tk` keys, head dimension `d` (the number of sequences follows from the
/// slices' lengths).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub heads: usize,
    pub rows: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
}

impl Dims {
    fn visible(&self, bias: &[f32]) -> Vec<Visible> {
        bias.chunks(self.tq * self.tk).map(|bias| Visible::new(bias, self.tq, self.tk, self.rows)).collect()
    }
}

/// A row-major `rows × cols` matrix over `data`.
fn matrix(data: &[f32], rows: usize, cols: usize) -> MatrixRef<'_> {
    MatrixRef::new(data, rows, cols, cols, 1).expect("the caller sliced rows × cols values")
}

/// `(out, probs)`: `softmax(q·kᵀ·scale + bias)·v` (`[b, heads, rows, d]`) and the probabilities
/// (`[b, heads, rows, tk]`) for the backward pass.
pub(super) fn forward(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { heads, rows, tq, tk, d, .. } = dims;
    let visible = dims.visible(bias);
    let (mut out, mut probs) = (zeroed(q.len()), zeroed(q.len() / d * tk));
    out.par_chunks_mut(rows * d).zip(probs.par_chunks_mut(rows * tk)).enumerate().for_each(|(item, (out, p))| {
        let sequence = item / heads;
        let seen = &visible[sequence];
        let q = matrix(&q[item * rows * d..][..rows * d], rows, d);
        let (k, v) = (&k[item * tk * d..][..tk * d], &v[item * tk * d..][..tk * d]);
        let all = 0..d.div_ceil(BLOCK);
        matmul_here(q, matrix(k, tk, d).t(), |band, chunk| if seen.sees(band, chunk) { all.clone() } else { 0..0 }, p);
        // The softmax over the keys each row sees; the rest (half of a causal mask's) are 0.
        for (r, row) in p.chunks_mut(tk).enumerate() {
            let keys = seen.keys_of_row(r);
            let bias = &bias[(sequence * tq + r % tq) * tk..][keys.clone()];
            row[..keys.start].fill(0.0);
            row[keys.end..].fill(0.0);
            let row = &mut row[keys];
            for (x, &m) in row.iter_mut().zip(bias) {
                *x = *x * scale + m;
            }
            softmax_in_place(row);
        }
        matmul_here(matrix(p, rows, tk), matrix(v, tk, d), |band, _| seen.keys_of_band(band), out);
    });
    (out, probs)
}

/// The inputs of [`backward`]: the forward pass's inputs and probabilities, and `∂out`.
pub(super) struct Saved<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub probs: &'a [f32],
    pub dout: &'a [f32],
}

/// `∂q`, `∂k` and `∂v` of [`forward`], one after another in one buffer.
pub(super) fn backward(saved: Saved<'_>, bias: &[f32], dims: Dims, scale: f32) -> Vec<f32> {
    let Dims { heads, rows, tk, d, .. } = dims;
    let Saved { q, k, v, probs, dout } = saved;
    let visible = dims.visible(bias);
    let mut grads = zeroed(q.len() + k.len() + v.len());
    let (dq, rest) = grads.split_at_mut(q.len());
    let (dk, dv) = rest.split_at_mut(k.len());
    let outputs = dq.par_chunks_mut(rows * d).zip(dk.par_chunks_mut(tk * d)).zip(dv.par_chunks_mut(tk * d));
    outputs.enumerate().for_each(|(item, ((dq, dk), dv))| {
        let seen = &visible[item / heads];
        let (q, dout) =
            (matrix(&q[item * rows * d..][..rows * d], rows, d), matrix(&dout[item * rows * d..][..rows * d], rows, d));
        let (k, v) = (matrix(&k[item * tk * d..][..tk * d], tk, d), matrix(&v[item * tk * d..][..tk * d], tk, d));
        let p = &probs[item * rows * tk..][..rows * tk];
        // ∂p = ∂out·vᵀ, then ∂s in place: where p is 0 the block is skipped and ∂s is 0 anyway.
        let mut ds = vec![0f32; rows * tk];
        let all = 0..d.div_ceil(BLOCK);
        matmul_here(dout, v.t(), |band, chunk| if seen.sees(band, chunk) { all.clone() } else { 0..0 }, &mut ds);
        for (r, (g, y)) in ds.chunks_mut(tk).zip(p.chunks(tk)).enumerate() {
            let keys = seen.keys_of_row(r);
            g[..keys.start].fill(0.0);
            g[keys.end..].fill(0.0);
            softmax_backward_in_place(&mut g[keys.clone()], &y[keys], scale);
        }
        let (ds, p) = (matrix(&ds, rows, tk), matrix(p, rows, tk));
        matmul_here(ds, k, |band, _| seen.keys_of_band(band), dq);
        matmul_here(ds.t(), q, |chunk, _| seen.bands_of_keys(chunk), dk);
        matmul_here(p.t(), dout, |chunk, _| seen.bands_of_keys(chunk), dv);
    });
    grads
}
