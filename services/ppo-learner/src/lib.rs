//! The PPO learner: owns the policy and its value head and turns batches of scored rollouts into
//! PPO updates, each of which is a new policy version.
//!
//! # Layout
//! - [`PpoConfig`]: every knob, with TRL/OpenRLHF-style defaults.
//! - [`PpoLearner`]: `train_step` (rewards → GAE → clipped policy and value losses over several
//!   epochs of minibatches) and the weights generators should serve next.
//! - `grad`: global gradient-norm clipping.
//! - [`fanout`]: rollout requests spread over generator replicas (least-loaded first, an
//!   in-flight limit, deadlines, retries elsewhere) and weight pushes to every replica.

mod config;
pub mod fanout;
pub mod grad;
mod learner;
mod service;

pub use config::PpoConfig;
pub use fanout::{Fanout, FanoutConfig, FanoutError};
pub use learner::{PpoLearner, StepStats};
pub use service::{StatusBoard, run};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ppo: {0}")]
    Model(#[from] candle_core::Error),
    #[error("ppo: empty batch (every rollout was a duplicate or stale)")]
    EmptyBatch,
    #[error("ppo: rollout {id} was made by policy version {made_by}, more than {max} versions behind {current}")]
    Stale { id: String, made_by: u64, current: u64, max: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;
