//! The log-prob head as one fused kernel: `log_softmax(logits)[target]` per position, with a
//! hand-written backward, `∂/∂logits = g · (onehot(target) − softmax(logits))`. The composite path
//! materialises the vocabulary-wide log-softmax (five ops, each a `[B, T, V]` tensor kept for the
//! backward pass); this keeps nothing but the logits it was given, and recomputes the softmax
//! row by row in the backward pass. With a 49k vocabulary that is most of a step's memory.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use pulp::{Simd, WithSimd};

use crate::fused::{rows_mut, slice, zeroed};
use crate::simd_math;

/// `log_softmax(logits)[targets]`: `logits: [.., V]` (f32, CPU), `targets: [..]` (u32) → `[..]`,
/// differentiable in `logits`.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    logits.contiguous()?.apply_op2(&targets, TokenLogprobs)
}

fn targets_of<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [u32]> {
    let data = storage.as_slice::<u32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the targets must be contiguous"),
    }
}

/// `max` and `log Σ exp(x − max)` of a row, vectorised ([`simd_math`]).
#[inline(always)]
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = simd_math::max(row);
    (max, simd_math::sum_exp(row, max).ln())
}

struct LogSumExp<'a>(&'a [f32]);

impl WithSimd for LogSumExp<'_> {
    type Output = (f32, f32);

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> (f32, f32) {
        log_sum_exp(self.0)
    }
}

/// `dx = scale · softmax(row)`.
struct SoftmaxTimes<'a> {
    dx: &'a mut [f32],
    row: &'a [f32],
    scale: f32,
}

impl WithSimd for SoftmaxTimes<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let (max, lse) = log_sum_exp(self.row);
        let shift = max + lse;
        for (d, &x) in self.dx.iter_mut().zip(self.row) {
            *d = self.scale * simd_math::exp(x - shift);
        }
    }
}

fn check(logits: &Layout, targets: &[u32], op: &'static str) -> Result<usize> {
    let v = *logits.dims().last().unwrap_or(&0);
    if v == 0 || logits.shape().elem_count() / v != targets.len() {
        candle_core::bail!("{op}: logits {:?} for {} targets", logits.dims(), targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("{op}: target {bad} is outside the vocabulary of {v}");
    }
    Ok(v)
}

struct TokenLogprobs;

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "fused-token-logprobs"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (logits, targets) = (slice(s1, l1, self.name())?, targets_of(s2, l2, self.name())?);
        let v = check(l1, targets, self.name())?;
        let out: Vec<f32> = (0..targets.len())
            .map(|i| {
                let row = &logits[i * v..(i + 1) * v];
                let (max, lse) = simd_math::vectorized(LogSumExp(row));
                row[targets[i] as usize] - max - lse
            })
            .collect();
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let backward = TokenLogprobsBackward { targets: targets.clone() };
        Ok((Some(logits.apply_op2_no_bwd(&g.contiguous()?, &backward)?), None))
    }
}

struct TokenLogprobsBackward {
    targets: Tensor,
}

impl CustomOp2 for TokenLogprobsBackward {
    fn name(&self) -> &'static str {
        "fused-token-logprobs-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (logits, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let targets = self.targets.flatten_all()?.to_vec1::<u32>()?;
        let v = check(l1, &targets, self.name())?;
        let mut out = zeroed(logits.len());
        rows_mut(&mut out, v, |dx, i| {
            let row = &logits[i * v..(i + 1) * v];
            simd_math::vectorized(SoftmaxTimes { dx, row, scale: -g[i] });
            dx[targets[i] as usize] += g[i];
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
