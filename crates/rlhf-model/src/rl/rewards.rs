//! Per-token rewards for PPO: a KL penalty on every response token and the reward model's
//! sequence score on the last one (Ziegler et al. 2019; Stiennon et al. 2020).

use candle_core::{Result, Tensor};

use super::kl::{KlEstimator, kl_estimate};
use crate::padding;

/// How the sequence score and the KL penalty become per-token rewards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardShaping {
    /// β, the KL coefficient (usually from a [`crate::KlController`]).
    pub kl_coef: f64,
    pub estimator: KlEstimator,
    /// Scores are clamped to `[-clip, clip]` after the missing-stop penalty.
    pub score_clip: Option<f64>,
    /// Subtracted from the score of a response that never emitted a stop token.
    pub missing_stop_penalty: Option<f64>,
}

/// Per-token rewards and the per-token KL they were penalised by, `[B, T]` each.
#[derive(Debug)]
pub struct ShapedRewards {
    pub rewards: Tensor,
    /// The masked KL estimate, for logging.
    pub kl: Tensor,
}

/// `r_t = -β·kl_t·m_t + [t = last response token]·s'`, with
/// `s' = clamp(score - penalty·[no stop token], ±clip)`.
/// `scores: [B]`, `logp`, `ref_logp`, `mask: [B, T]`, `finished[b]`: row `b` ended with a stop token.
///
/// PyTorch (OpenRLHF's `compute_reward`, plus TRL's `missing_eos_penalty`):
/// ```text
/// r = r - penalty * (~finished); r = r.clamp(-clip, clip)
/// kl = compute_approx_kl(logp, ref_logp, kl_estimator) * mask
/// last = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
/// reward = torch.zeros_like(kl).scatter_(1, last, r.unsqueeze(1)) - kl_coef * kl
/// ```
pub fn kl_penalized_rewards(
    scores: &Tensor,
    logp: &Tensor,
    ref_logp: &Tensor,
    mask: &Tensor,
    finished: &[bool],
    shaping: RewardShaping,
) -> Result<ShapedRewards> {
    let kl = (kl_estimate(logp, ref_logp, shaping.estimator)? * mask)?;
    let mut score = scores.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    if score.len() != finished.len() {
        candle_core::bail!("{} scores but {} finished flags", score.len(), finished.len());
    }
    if let Some(bad) = score.iter().find(|s| !s.is_finite()) {
        candle_core::bail!("non-finite reward-model score {bad}");
    }
    for (s, &done) in score.iter_mut().zip(finished) {
        if !done {
            *s -= shaping.missing_stop_penalty.unwrap_or(0.0);
        }
        if let Some(c) = shaping.score_clip {
            *s = s.clamp(-c, c);
        }
    }
    let (batch, len) = mask.dims2()?;
    let last = padding::last_real_index(&padding::mask_rows(mask)?)?;
    let mut placed = vec![0f64; batch * len];
    for (b, (&t, s)) in last.iter().zip(&score).enumerate() {
        placed[b * len + t] = *s;
    }
    let placed = Tensor::from_vec(placed, (batch, len), mask.device())?.to_dtype(kl.dtype())?;
    let rewards = (placed - (&kl * shaping.kl_coef)?)?;
    Ok(ShapedRewards { rewards, kl })
}
