//! SwiGLU's gate, `silu(g) · u`, as one fused kernel with a hand-written backward:
//! `∂/∂u = dh · silu(g)`, `∂/∂g = dh · u · σ(g) · (1 + g · (1 − σ(g)))`. The composite path is a
//! silu (whose backward is five more ops) and a multiply, each keeping an `[B, T, intermediate]`
//! tensor for the backward pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::fused::{PARALLEL_ELEMENTS, rows_mut, slice, zeroed};
use crate::simd_math::{self, sigmoid};

/// `silu(gate) · up`, differentiable in both; same shapes, f32 on the CPU.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// `h = silu(g) · u` over a row.
struct ForwardRow<'a> {
    h: &'a mut [f32],
    g: &'a [f32],
    u: &'a [f32],
}

impl WithSimd for ForwardRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for ((h, &g), &u) in self.h.iter_mut().zip(self.g).zip(self.u) {
            *h = g * sigmoid(g) * u;
        }
    }
}

/// `dg`, `du` of a row from `dh`.
struct BackwardRow<'a> {
    dg: &'a mut [f32],
    du: &'a mut [f32],
    g: &'a [f32],
    u: &'a [f32],
    dh: &'a [f32],
}

impl WithSimd for BackwardRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let rows = self.dg.iter_mut().zip(self.du.iter_mut()).zip(self.g).zip(self.u).zip(self.dh);
        for ((((dg, du), &g), &u), &dh) in rows {
            let s = sigmoid(g);
            *du = dh * g * s;
            *dg = dh * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

fn check(l1: &Layout, l2: &Layout, op: &'static str) -> Result<usize> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{op}: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
    }
    Ok(*l1.dims().last().unwrap_or(&1))
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = check(l1, l2, self.name())?.max(1);
        let (g, u) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let mut out = zeroed(g.len());
        rows_mut(&mut out, width, |h, i| {
            let at = i * width;
            simd_math::vectorized(ForwardRow { h, g: &g[at..at + width], u: &u[at..at + width] });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, dh: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One op computes both: the first half of its result is dg, the second du.
        let n = g.elem_count();
        let both = g.apply_op3_no_bwd(u, &dh.contiguous()?, &SwiGluBackward)?;
        let dg = both.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = both.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// Reads `dh` in place as its third input (it was copied out of its tensor into a `Vec` first),
/// and works row by row, so the inner loop is plain slices rather than a closure per element.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "fused-swiglu-backward"
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
        let width = check(l1, l2, self.name())?.max(1);
        let (g, u, dh) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        if dh.len() != g.len() {
            candle_core::bail!("{}: {} gradients for {} values", self.name(), dh.len(), g.len());
        }
        let n = g.len();
        let mut out = zeroed(2 * n);
        let (dg, du) = out.split_at_mut(n);
        let row = |(i, (dg, du)): (usize, (&mut [f32], &mut [f32]))| {
            let at = i * width;
            let (g, u, dh) = (&g[at..at + dg.len()], &u[at..at + dg.len()], &dh[at..at + dg.len()]);
            simd_math::vectorized(BackwardRow { dg, du, g, u, dh });
        };
        if n >= PARALLEL_ELEMENTS {
            dg.par_chunks_mut(width).zip(du.par_chunks_mut(width)).enumerate().for_each(row);
        } else {
            dg.chunks_mut(width).zip(du.chunks_mut(width)).enumerate().for_each(row);
        }
        Ok((CpuStorage::F32(out), Shape::from((2 * n,))))
    }
}
