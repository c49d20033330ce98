//! Controllers of the KL coefficient β.

use serde::{Deserialize, Serialize};

/// Keeps β fixed, or adapts it towards a target KL (Ziegler et al. 2019):
/// `β ← β·(1 + clip(KL/target - 1, -0.2, 0.2)·n_steps/horizon)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KlController {
    Fixed { coef: f64 },
    Adaptive { coef: f64, target: f64, horizon: f64 },
}

impl KlController {
    /// The current β.
    pub fn coef(&self) -> f64 {
        match *self {
            KlController::Fixed { coef } | KlController::Adaptive { coef, .. } => coef,
        }
    }

    /// Updates β after a step that observed mean sequence KL `observed` over `n_steps` samples.
    pub fn update(&mut self, observed: f64, n_steps: usize) {
        if let KlController::Adaptive { coef, target, horizon } = self {
            let error = (observed / *target - 1.0).clamp(-0.2, 0.2);
            *coef *= 1.0 + error * n_steps as f64 / *horizon;
        }
    }
}
