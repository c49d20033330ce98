//! Generalised advantage estimation (Schulman et al. 2016).
//!
//! Backwards over the response tokens of each row:
//! `δ_t = r_t + γ·V_{t+1} - V_t`, `A_t = δ_t + γλ·A_{t+1}`, `R_t = A_t + V_t`,
//! where `t + 1` is the next *unmasked* position. After the last response token `V` is the
//! bootstrap value of that row (0 when the sequence ended, or the critic's estimate for a
//! sequence cut off mid-way) and `A` is 0. Masked positions get `A = R = 0`.
//! Not differentiated: advantages and returns are targets.

use candle_core::{DType, Result, Tensor};

/// Advantages and returns, `[B, T]` each.
#[derive(Debug)]
pub struct Gae {
    pub advantages: Tensor,
    pub returns: Tensor,
}

/// `rewards`, `values`, `mask: [B, T]`; `bootstrap: [B]` values after each row's last token
/// (`None`: all 0).
pub fn gae(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f64,
    lambda: f64,
    bootstrap: Option<&Tensor>,
) -> Result<Gae> {
    let dtype = values.dtype();
    let rows = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec2::<f64>();
    let (r, v, m) = (rows(rewards)?, rows(values)?, rows(mask)?);
    let boot = match bootstrap {
        Some(b) => b.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        None => vec![0.0; v.len()],
    };
    let (batch, len) = values.dims2()?;
    let mut advantages = vec![0f64; batch * len];
    let mut returns = vec![0f64; batch * len];
    for b in 0..batch {
        let (mut next_value, mut next_adv) = (boot[b], 0.0);
        for t in (0..len).rev() {
            if m[b][t] == 0.0 {
                continue;
            }
            let delta = r[b][t] + gamma * next_value - v[b][t];
            let adv = delta + gamma * lambda * next_adv;
            advantages[b * len + t] = adv;
            returns[b * len + t] = adv + v[b][t];
            (next_value, next_adv) = (v[b][t], adv);
        }
    }
    let device = values.device();
    Ok(Gae {
        advantages: Tensor::from_vec(advantages, (batch, len), device)?.to_dtype(dtype)?,
        returns: Tensor::from_vec(returns, (batch, len), device)?.to_dtype(dtype)?,
    })
}
