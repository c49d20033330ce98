//! The PPO learner: owns the policy and its value head and turns batches of scored rollouts into
//! PPO updates, each of which is a new policy version.
//!
//! # Layout
//! - [`PpoConfig`]: every knob, with TRL/OpenRLHF-style defaults.
//! - [`PpoLearner`]: `train_step` (rewards → GAE → clipped policy and value losses over several
//!   epochs of minibatches) and the weights generators should serve next.
//! - `grad`: global gradient-norm clipping.
//! - [`RolloutBackend`]: where a step's rollouts come from and where new versions go:
//!   [`Embedded`] in one process, [`ClusterBackend`] over replicas, Redis and a scorer service.
//! - [`discovery`]: where the replicas are (a list, or DNS re-resolved while a run goes).
//! - [`fanout`]: rollout requests spread over generator replicas (least-loaded first, an
//!   in-flight limit, deadlines, retries elsewhere) and weight pushes to every replica.
//! - [`StatusBoard`] and [`run`]: the learner's own gRPC face (status, checkpoint on request,
//!   the judges the scorers load);
//!   [`serve`]: the learner process of a distributed run, backend and service together.

mod backend;
mod cluster;
mod config;
pub mod discovery;
mod embedded;
pub mod fanout;
pub mod grad;
mod learner;
mod process;
mod service;

pub use backend::{RolloutBackend, RolloutMode};
pub use cluster::{ClusterBackend, ClusterConfig, ClusterCounters};
pub use config::{Critic, PpoConfig};
pub use embedded::{Embedded, LocalError, LocalGenerator, LocalScorer};
pub use fanout::{Fanout, FanoutConfig, FanoutError};
pub use learner::{PpoLearner, StepStats};
pub use process::{LearnerOptions, serve};
pub use service::{JudgesLoader, StatusBoard, run};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ppo: {0}")]
    Model(#[from] candle_core::Error),
    #[error("ppo: empty batch (every rollout was a duplicate or stale)")]
    EmptyBatch,
    #[error("ppo: rollout {id} was made by policy version {made_by}, more than {max} versions behind {current}")]
    Stale { id: rlhf_types::RolloutId, made_by: u64, current: u64, max: u64 },
    #[error("rollouts: {0}")]
    Rollouts(String),
    #[error("rollouts: {0}")]
    Local(String),
    #[error(transparent)]
    Queue(#[from] rlhf_queue::Error),
    #[error(transparent)]
    Fanout(#[from] FanoutError),
    #[error(transparent)]
    Weights(#[from] rlhf_proto::weights::BadWeights),
}

pub type Result<T> = std::result::Result<T, Error>;
