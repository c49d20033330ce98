//! Per-token estimators of KL(π ‖ π_ref) from the log-probs of the sampled tokens
//! (Schulman, "Approximating KL divergence", 2020).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which unbiased-or-low-variance estimator to use; with `lr = log π(y) - log π_ref(y)`:
/// - `K1`: `lr` (unbiased, high variance, can be negative);
/// - `K2`: `lr² / 2` (biased, low variance);
/// - `K3`: `exp(-lr) - 1 + lr` (unbiased, low variance, never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    #[default]
    K1,
    K2,
    K3,
}

/// `logp`, `ref_logp: [B, T]` → per-token KL estimate `[B, T]` (unmasked).
pub fn kl_estimate(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Result<Tensor> {
    let log_ratio = (logp - ref_logp)?;
    match estimator {
        KlEstimator::K1 => Ok(log_ratio),
        KlEstimator::K2 => log_ratio.sqr()? * 0.5,
        KlEstimator::K3 => (log_ratio.neg()?.exp()? - 1.0)? + log_ratio,
    }
}
