//! PPO's clipped surrogate policy loss and clipped value loss.

use candle_core::{Result, Tensor};

use super::masked::masked_mean;

/// Clipping of the policy ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyClip {
    /// Lower clip `ε_low`: the ratio is clipped at `1 - ε_low`.
    pub low: f64,
    /// Upper clip `ε_high`: the ratio is clipped at `1 + ε_high` (DAPO raises it above `ε_low`).
    pub high: f64,
    /// Dual clip `c > 1` (Ye et al. 2020): for negative advantages the loss is bounded by `-c·A`.
    pub dual: Option<f64>,
}

impl Default for PolicyClip {
    fn default() -> Self {
        PolicyClip { low: 0.2, high: 0.2, dual: None }
    }
}

/// The policy loss with the statistics PPO runs are watched by.
#[derive(Debug)]
pub struct PolicyLoss {
    /// Scalar loss to minimise.
    pub loss: Tensor,
    /// Share of masked tokens where the clipped term was the active one.
    pub clip_fraction: f32,
    /// `½·mean((log π - log π_old)²)`, TRL's `approxkl`.
    pub approx_kl: f32,
}

/// Clipped surrogate, token mean over `mask`:
/// `ρ = exp(clamp(log π - log π_old, ±20))`,
/// `L = -min(ρ·A, clip(ρ, 1 - ε_low, 1 + ε_high)·A)`,
/// and with dual clip, for `A < 0`: `L = min(L, -c·A)`.
/// `logp`, `old_logp`, `advantages`, `mask: [B, T]`.
///
/// PyTorch (OpenRLHF's `PolicyLoss`):
/// ```text
/// ratio = (log_probs - old_log_probs).clamp(-20, 20).exp()
/// surr1 = ratio * adv; surr2 = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
/// loss = -torch.min(surr1, surr2)
/// if dual_clip: loss = torch.where(adv < 0, torch.min(loss, -dual_clip * adv), loss)
/// loss = masked_mean(loss, mask)
/// ```
pub fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: PolicyClip,
) -> Result<PolicyLoss> {
    let log_ratio = (logp - old_logp)?.clamp(-20.0, 20.0)?;
    let ratio = log_ratio.exp()?;
    let surr1 = (&ratio * advantages)?;
    let surr2 = (ratio.clamp(1.0 - clip.low, 1.0 + clip.high)? * advantages)?;
    let mut per_token = surr1.minimum(&surr2)?.neg()?;
    if let Some(c) = clip.dual {
        let bound = (advantages * -c)?;
        let negative = advantages.lt(0.0)?;
        per_token = negative.where_cond(&per_token.minimum(&bound)?, &per_token)?;
    }
    let loss = masked_mean(&per_token, mask)?;
    let clipped = surr2.lt(&surr1)?.to_dtype(mask.dtype())?;
    let clip_fraction = scalar(&masked_mean(&clipped, mask)?)?;
    let approx_kl = scalar(&(masked_mean(&log_ratio.detach().sqr()?, mask)? * 0.5)?)?;
    Ok(PolicyLoss { loss, clip_fraction, approx_kl })
}

/// The value loss with the share of tokens where the clipped prediction was the active one.
#[derive(Debug)]
pub struct ValueLoss {
    pub loss: Tensor,
    pub clip_fraction: f32,
}

/// Clipped value loss, token mean over `mask`:
/// `V_clip = V_old + clamp(V - V_old, ±clip)`, `L = ½·max((V - R)², (V_clip - R)²)`;
/// with `clip = None`, `L = ½·(V - R)²`.
/// `values`, `old_values`, `returns`, `mask: [B, T]`.
///
/// PyTorch (TRL):
/// ```text
/// vpredclipped = torch.clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
/// vf_loss = 0.5 * masked_mean(torch.max((vpred - returns) ** 2, (vpredclipped - returns) ** 2), mask)
/// ```
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: Option<f64>,
) -> Result<ValueLoss> {
    let unclipped = (values - returns)?.sqr()?;
    let Some(clip) = clip else {
        return Ok(ValueLoss { loss: (masked_mean(&unclipped, mask)? * 0.5)?, clip_fraction: 0.0 });
    };
    let clipped_values = (old_values + (values - old_values)?.clamp(-clip, clip)?)?;
    let clipped = (clipped_values - returns)?.sqr()?;
    let loss = (masked_mean(&unclipped.maximum(&clipped)?, mask)? * 0.5)?;
    let active = clipped.gt(&unclipped)?.to_dtype(mask.dtype())?;
    Ok(ValueLoss { loss, clip_fraction: scalar(&masked_mean(&active, mask)?)? })
}

fn scalar(t: &Tensor) -> Result<f32> {
    t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()
}
