//! Fused CPU kernels with hand-written backward passes, the llm.c way: RMSNorm, softmax over the
//! last dimension, and the rotary embedding. Each is one pass over memory forward and one
//! backward, where the composite path runs five to ten candle ops each way, every one allocating
//! its result and keeping it for the backward pass.
//!
//! f32 on the CPU only (training runs in f32); anything else takes the composite path, which
//! stays the reference: `tests/it/gradients.rs` checks both against each other and against
//! finite differences.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::simd_math;

/// Rows below this many elements in all are done on the calling thread: handing them to the
/// pool costs more than it saves.
pub(crate) const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Whether the fused kernels can run on `x`.
pub fn supported(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// The f32 slice a contiguous layout covers.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// `len` zeros for a kernel's output, written by rayon's threads when there are many: the same
/// `vec![0.0; len]` on the calling thread was 2.5% of a reward-model step (a serial memset of
/// every output of the backward pass while the other core waited).
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    if len < PARALLEL_ELEMENTS {
        return vec![0.0; len];
    }
    // Sixteen at a time (one 64-byte store each): rayon writes a collected item at a time.
    let mut blocks: Vec<[f32; 16]> = Vec::with_capacity(len.div_ceil(16));
    blocks.par_extend(rayon::iter::repeat_n([0f32; 16], len.div_ceil(16)));
    let mut out = blocks.into_flattened();
    out.truncate(len);
    out
}

/// Runs `f` on each (output row, row index) pair, on the pool when the work is large.
pub(crate) fn rows_mut(out: &mut [f32], width: usize, f: impl Fn(&mut [f32], usize) + Sync + Send) {
    if out.len() >= PARALLEL_ELEMENTS {
        out.par_chunks_mut(width).enumerate().for_each(|(i, row)| f(row, i));
    } else {
        out.chunks_mut(width).enumerate().for_each(|(i, row)| f(row, i));
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x · r · w with r = 1 / sqrt(mean(x²) + eps), over the last dimension.

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension of `x`, differentiable in `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

/// Rows per block of the RMSNorm backward pass, each summing its own part of the weight's
/// gradient: fixed, so the sum is the same on any number of threads.
const RMS_NORM_BLOCK_ROWS: usize = 64;

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mean_sq = simd_math::dot(row, row) / row.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// One row of the RMSNorm: `y = x · r · w`.
struct RmsNormRow<'a> {
    y: &'a mut [f32],
    x: &'a [f32],
    w: &'a [f32],
    eps: f32,
}

impl WithSimd for RmsNormRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let r = inv_rms(self.x, self.eps);
        for ((y, &v), &g) in self.y.iter_mut().zip(self.x).zip(self.w) {
            *y = v * r * g;
        }
    }
}

/// One row of the RMSNorm's backward pass: its `dx`, and its part of `dw` added to `dw`.
struct RmsNormBackwardRow<'a> {
    dx: &'a mut [f32],
    dw: &'a mut [f32],
    x: &'a [f32],
    dy: &'a [f32],
    w: &'a [f32],
    eps: f32,
}

impl WithSimd for RmsNormBackwardRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let (x, dy, w) = (self.x, self.dy, self.w);
        let r = inv_rms(x, self.eps);
        let dot = r * simd_math::dot3(x, dy, w) / x.len() as f32;
        for ((((dx, dw), &v), &g), &s) in self.dx.iter_mut().zip(self.dw.iter_mut()).zip(x).zip(dy).zip(w) {
            *dx = r * (g * s - v * r * dot);
            *dw += g * v * r;
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = w.len();
        if l1.dims().last() != Some(&d) {
            candle_core::bail!("fused-rms-norm: x is {:?}, the weight {d}", l1.dims());
        }
        let mut out = zeroed(x.len());
        rows_mut(&mut out, d, |y, i| {
            simd_math::vectorized(RmsNormRow { y, x: &x[i * d..(i + 1) * d], w, eps: self.eps })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One op computes both: rows 0..N of its (N + 1, D) result are dx, row N is dw.
        let d = w.dim(0)?;
        let n = x.elem_count() / d.max(1);
        let both = x.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let both = both.reshape((n + 1, d))?;
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = both.narrow(0, n, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Takes `dy` as its third input and reads it in place (it was copied out into a `Vec` first).
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let d = w.len();
        let n = x.len() / d.max(1);
        if dy.len() != x.len() {
            candle_core::bail!("{}: {} gradients for {} values", self.name(), dy.len(), x.len());
        }
        let mut out = zeroed((n + 1) * d);
        let (dx, dw) = out.split_at_mut(n * d);
        // dx = r · (g − x̂ · mean(g · x̂)) with g = dy · w and x̂ = x · r; each block of rows also
        // sums its share of dw = Σ_rows dy · x̂ (one pass over x and dy, on every thread).
        let block = |(b, dx): (usize, &mut [f32])| {
            let mut dw = vec![0f32; d];
            for (j, dx) in dx.chunks_mut(d).enumerate() {
                let i = b * RMS_NORM_BLOCK_ROWS + j;
                let (x, dy) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
                simd_math::vectorized(RmsNormBackwardRow { dx, dw: &mut dw, x, dy, w, eps: self.eps });
            }
            dw
        };
        let blocks: Vec<Vec<f32>> = if dx.len() >= PARALLEL_ELEMENTS {
            dx.par_chunks_mut(RMS_NORM_BLOCK_ROWS * d).enumerate().map(block).collect()
        } else {
            dx.chunks_mut(RMS_NORM_BLOCK_ROWS * d).enumerate().map(block).collect()
        };
        // Added in block order: the same sum whichever thread computed which block.
        for part in &blocks {
            dw.iter_mut().zip(part).for_each(|(dw, p)| *dw += p);
        }
        Ok((CpuStorage::F32(out), Shape::from(((n + 1) * d,))))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension: y = exp(x − max) / Σ exp(x − max); dx = y · (dy − Σ dy · y).

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let d = *layout.dims().last().unwrap_or(&1);
        let mut out = x.to_vec();
        rows_mut(&mut out, d.max(1), |y, _| softmax_in_place(y));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward { scale: 1.0 })?))
    }
}

/// The softmax of `row`, in place, vectorised ([`simd_math`]).
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    simd_math::vectorized(SoftmaxRow(row))
}

struct SoftmaxRow<'a>(&'a mut [f32]);

impl WithSimd for SoftmaxRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let row = self.0;
        let max = simd_math::max(row);
        row.iter_mut().for_each(|x| *x = simd_math::exp(*x - max));
        let inv = 1.0 / simd_math::sum(row);
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `dx = (y · (dy − Σ dy·y)) · scale`: the softmax's backward pass, then that of a scale applied
/// to its input (exact when the scale is 1).
pub(crate) struct SoftmaxBackward {
    pub(crate) scale: f32,
}

/// One row of [`SoftmaxBackward`] in place: `g` holds ∂y and becomes ∂x.
pub(crate) fn softmax_backward_in_place(g: &mut [f32], y: &[f32], scale: f32) {
    simd_math::vectorized(SoftmaxBackwardInPlace { g, y, scale })
}

struct SoftmaxBackwardInPlace<'a> {
    g: &'a mut [f32],
    y: &'a [f32],
    scale: f32,
}

impl WithSimd for SoftmaxBackwardInPlace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let dot = simd_math::dot(self.y, self.g);
        for (g, &y) in self.g.iter_mut().zip(self.y) {
            *g = (y * (*g - dot)) * self.scale;
        }
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let d = *l1.dims().last().unwrap_or(&1);
        let mut out = zeroed(y.len());
        rows_mut(&mut out, d.max(1), |dx, i| {
            dx.copy_from_slice(&dy[i * d..(i + 1) * d]);
            softmax_backward_in_place(dx, &y[i * d..(i + 1) * d], self.scale)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding (HF's rotate_half): y₁ = x₁ cos − x₂ sin, y₂ = x₂ cos + x₁ sin. It is a
// rotation, so the backward pass is the same kernel with sin negated.

/// Rotates `x: [B, H, T, head_dim]` by the angles whose `cos` and `sin` are `[B, T, head_dim / 2]`,
/// differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let tables = RopeTables::new(cos.flatten_all()?.to_vec1::<f32>()?, sin.flatten_all()?.to_vec1::<f32>()?);
    rope_with(x, &tables)
}

/// [`rope`] with its tables already read out: a forward pass builds them once and every layer's
/// queries and keys share them, where reading them out of their tensors cost two copies per layer.
pub fn rope_with(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope { tables: tables.clone(), sin_sign: 1.0 })
}

/// The rotary angles' `cos` and `sin`, `[B, T, head_dim / 2]` flattened, shared without copying.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
}

impl RopeTables {
    pub fn new(cos: Vec<f32>, sin: Vec<f32>) -> Self {
        RopeTables { cos: cos.into(), sin: sin.into() }
    }
}

struct Rope {
    tables: RopeTables,
    /// 1 forward; −1 backward, the inverse rotation (`sin · −1` is `−sin` exactly).
    sin_sign: f32,
}

/// One row of [`Rope`]. Run through [`simd_math::vectorized`]: as a plain closure the loop
/// compiled to 4-wide SSE (1.4% of a mixed-precision PPO iteration's samples).
struct RopeRow<'a> {
    y: &'a mut [f32],
    x: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    sin_sign: f32,
}

impl WithSimd for RopeRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let half = self.cos.len();
        let (x1, x2) = self.x.split_at(half);
        let (y1, y2) = self.y.split_at_mut(half);
        let angles = self.cos.iter().zip(self.sin);
        for (((y1, y2), (&x1, &x2)), (&cos, &sin)) in
            y1.iter_mut().zip(y2.iter_mut()).zip(x1.iter().zip(x2)).zip(angles)
        {
            let sin = sin * self.sin_sign;
            *y1 = x1 * cos - x2 * sin;
            *y2 = x2 * cos + x1 * sin;
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let &[b, h, t, d] = layout.dims() else {
            candle_core::bail!("fused-rope: x must be [B, H, T, head_dim], got {:?}", layout.dims())
        };
        let half = d / 2;
        let (all_cos, all_sin) = (&self.tables.cos, &self.tables.sin);
        if all_cos.len() != b * t * half || all_sin.len() != all_cos.len() || d % 2 != 0 {
            candle_core::bail!(
                "fused-rope: angles for {} positions, x is {:?}",
                all_cos.len() / half.max(1),
                layout.dims()
            );
        }
        let mut out = zeroed(x.len());
        // Row i of [B·H·T, d] is batch i / (H·T), position i % T.
        rows_mut(&mut out, d.max(1), |y, i| {
            let (batch, pos) = (i / (h * t), i % t);
            let at = (batch * t + pos) * half;
            let (cos, sin) = (&all_cos[at..at + half], &all_sin[at..at + half]);
            simd_math::vectorized(RopeRow { y, x: &x[i * d..(i + 1) * d], cos, sin, sin_sign: self.sin_sign });
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let back = Rope { tables: self.tables.clone(), sin_sign: -self.sin_sign };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_a_masked_row_is_the_plain_formula() {
        let mut row = vec![0.5f32, -1.25, crate::padding::MASKED, 2.0, crate::padding::MASKED];
        let expected: Vec<f32> = {
            let max = 2.0f32;
            let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let inv = 1.0 / e.iter().sum::<f32>();
            e.iter().map(|v| v * inv).collect()
        };
        softmax_in_place(&mut row);
        // simd_math's exp is within 1 ulp of libm's; the normalisation adds a rounding or two.
        for (got, want) in row.iter().zip(&expected) {
            assert!((got - want).abs() <= 4.0 * f32::EPSILON * want, "{row:?} vs {expected:?}");
        }
        assert_eq!((row[2], row[4]), (0.0, 0.0));
    }
}
