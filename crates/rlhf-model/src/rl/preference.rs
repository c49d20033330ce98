//! Reward-model losses: Bradley–Terry on pairs, and the K-way ranking loss of InstructGPT.

use candle_core::{Result, Tensor};

/// `log σ(x)`, computed stably as `-softplus(-x) = -(max(-x, 0) + log(1 + e^{-|x|}))`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let softplus_neg = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    softplus_neg.neg()
}

/// Bradley–Terry pairwise loss, `mean(-log σ(r_w - r_l - margin))`.
/// `chosen`, `rejected`, `margin: [N]`.
///
/// PyTorch (OpenRLHF's `PairWiseLoss`): `-F.logsigmoid(chosen - rejected - margin).mean()`.
pub fn bradley_terry_loss(chosen: &Tensor, rejected: &Tensor, margin: Option<&Tensor>) -> Result<Tensor> {
    let mut diff = (chosen - rejected)?;
    if let Some(m) = margin {
        diff = (diff - m)?;
    }
    log_sigmoid(&diff)?.mean_all()?.neg()
}

/// Why a ranking cannot be trained on (or stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankingError {
    #[error("a ranking needs at least 2 responses, got {0}")]
    TooFew(usize),
    #[error("response index {index} is out of range for {len} responses")]
    OutOfRange { index: usize, len: usize },
    #[error("response index {0} appears more than once in the ranking")]
    Duplicate(usize),
}

/// Checks that `order` ranks `order.len() >= 2` distinct responses with indices below `len`.
pub fn validate_ranking(order: &[usize], len: usize) -> std::result::Result<(), RankingError> {
    if order.len() < 2 {
        return Err(RankingError::TooFew(order.len()));
    }
    let mut seen = vec![false; len];
    for &index in order {
        let slot = seen.get_mut(index).ok_or(RankingError::OutOfRange { index, len })?;
        if std::mem::replace(slot, true) {
            return Err(RankingError::Duplicate(index));
        }
    }
    Ok(())
}

/// All `C(K, 2)` (winner, loser) pairs of a ranking given best first.
pub fn ranking_pairs(order: &[usize]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::with_capacity(order.len() * order.len().saturating_sub(1) / 2);
    for (i, &w) in order.iter().enumerate() {
        pairs.extend(order[i + 1..].iter().map(|&l| (w, l)));
    }
    pairs
}

/// K-way ranking loss (Ouyang et al. 2022, eq. 1): each ranking of `K` responses contributes
/// `-(1 / C(K,2)) Σ_{(w,l)} log σ(r_w - r_l)` and the loss is the mean over rankings, so every
/// prompt weighs the same however many responses it ranked.
/// `rewards: [M]` holds the scores of all responses; each ranking lists indices into it, best first.
///
/// PyTorch:
/// ```text
/// per_ranking = [-(F.logsigmoid(r[w] - r[l])).mean() for each ranking's pairs (w, l)]
/// loss = torch.stack(per_ranking).mean()
/// ```
pub fn ranking_loss(rewards: &Tensor, rankings: &[Vec<usize>]) -> Result<Tensor> {
    let m = rewards.dim(0)?;
    if rankings.is_empty() {
        candle_core::bail!("ranking loss over an empty batch");
    }
    let (mut winners, mut losers, mut weights) = (vec![], vec![], vec![]);
    for order in rankings {
        validate_ranking(order, m).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let pairs = ranking_pairs(order);
        let weight = 1.0 / (pairs.len() * rankings.len()) as f64;
        for (w, l) in pairs {
            winners.push(w as u32);
            losers.push(l as u32);
            weights.push(weight);
        }
    }
    let device = rewards.device();
    let n = winners.len();
    let chosen = rewards.index_select(&Tensor::from_vec(winners, n, device)?, 0)?;
    let rejected = rewards.index_select(&Tensor::from_vec(losers, n, device)?, 0)?;
    let weights = Tensor::from_vec(weights, n, device)?.to_dtype(rewards.dtype())?;
    (log_sigmoid(&(chosen - rejected)?)? * weights)?.sum_all()?.neg()
}

/// Share of ranked pairs whose winner the rewards score strictly higher.
pub fn pairwise_accuracy(rewards: &[f32], rankings: &[Vec<usize>]) -> f64 {
    let (mut right, mut total) = (0usize, 0usize);
    for order in rankings {
        for (w, l) in ranking_pairs(order) {
            total += 1;
            right += usize::from(rewards[w] > rewards[l]);
        }
    }
    if total == 0 { 0.0 } else { right as f64 / total as f64 }
}
