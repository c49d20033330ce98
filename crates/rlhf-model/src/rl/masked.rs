//! Means, variances and whitening over the positions a mask selects.

use candle_core::{D, Result, Tensor};

/// `Σ x·m / max(Σ m, 1)`: the mean over masked positions, a scalar tensor (0 for an empty mask).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    (x * mask)?.sum_all()?.broadcast_div(&mask.sum_all()?.maximum(1.0)?)
}

/// Per-row masked mean over the last axis: `[B, T]` → `[B]`.
pub fn masked_mean_rows(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    (x * mask)?.sum(D::Minus1)?.broadcast_div(&mask.sum(D::Minus1)?.maximum(1.0)?)
}

/// Masked variance, `mean_m((x - mean_m(x))²)`, times `n / (n - 1)` when `unbiased`
/// (TRL's `masked_var`). A scalar tensor.
pub fn masked_var(x: &Tensor, mask: &Tensor, unbiased: bool) -> Result<Tensor> {
    let centered = x.broadcast_sub(&masked_mean(x, mask)?)?;
    let var = masked_mean(&centered.sqr()?, mask)?;
    if !unbiased {
        return Ok(var);
    }
    let n = mask.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    if n < 2.0 { Ok(var) } else { var * (n / (n - 1.0)) }
}

/// Whitening: `(x - μ) / sqrt(σ² + 1e-8)` with masked, unbiased moments; with `shift_mean = false`
/// the mean is added back (TRL's `masked_whiten`). Unlike TRL, masked positions come out as 0.
pub fn whiten(x: &Tensor, mask: &Tensor, shift_mean: bool) -> Result<Tensor> {
    let mean = masked_mean(x, mask)?;
    let var = masked_var(x, mask, true)?;
    let mut white = x.broadcast_sub(&mean)?.broadcast_div(&(var + 1e-8)?.sqrt()?)?;
    if !shift_mean {
        white = white.broadcast_add(&mean)?;
    }
    white * mask
}
