//! The product's main job on one machine: supervised fine-tuning, preference collection by
//! simulated annotators, reward-model training and PPO, watched for reward hacking and written
//! up as a report, all through the same service cores that run as separate processes at scale.
//!
//! # Layout
//! - [`config`]: `PipelineConfig`, the whole run in one JSON document.
//! - [`run_dir`]: the run directory: checkpoints, state, metrics, report.
//! - [`task`]: the bundled assistant world, its tokenizer and the chat format.
//! - [`sft`], [`collect`], [`reward`], [`ppo`]: the stages; each reads and writes the run directory.
//! - [`cluster`]: the stages of a distributed run, over the replicas, Redis and the services.
//! - [`preference_files`]: importing and exporting preference data in TRL's JSON Lines formats.
//! - [`eval`]: held-out evaluation against the gold preference, and the reward-hacking alarm.
//! - [`gold_pairs`]: the reward model's accuracy by kind of answer pair (correct over wrong, …).
//! - [`report`]: `report.html` (with SVG plots) and `summary.json`.
//! - [`pipeline`]: all stages in order, skipping finished ones on `--resume`.
//!
//! **Architecture invariant:** stages talk to the services only through the service cores
//! (`policy-generator`, `reward-scorer`, `preference-store`, `ppo-learner`) and rollouts travel
//! only through `rlhf-queue`; going distributed swaps the transport, not this code.

pub mod cluster;
pub mod collect;
pub mod collect_human;
pub mod config;
pub mod eval;
pub mod gold_pairs;
pub mod memory;
pub mod metric;
pub mod pipeline;
pub mod ppo;
pub mod preference_files;
mod progress;
pub mod report;
pub mod reward;
pub mod run_dir;
pub mod sft;
pub mod task;

pub use config::PipelineConfig;
pub use pipeline::{InProcess, Stage, StageBackends, run_all, run_all_with, run_stage, run_stage_with};
pub use run_dir::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("run directory: {0}")]
    RunDir(String),
    #[error("stage {stage} needs {missing} first: run `rlhf {missing}` (or `rlhf run`)")]
    MissingStage { stage: &'static str, missing: &'static str },
    #[error(
        "stage rm needs rankings: {0}; collect them (`rlhf collect`) or import your own (`rlhf import-preferences FILE --run-dir DIR`)"
    )]
    NoRankings(String),
    #[error(transparent)]
    Data(#[from] rlhf_data::Error),
    #[error(transparent)]
    Model(#[from] candle_core::Error),
    #[error(transparent)]
    Preferences(#[from] preference_store::Error),
    #[error(transparent)]
    Generator(#[from] policy_generator::Error),
    #[error(transparent)]
    Scorer(#[from] reward_scorer::Error),
    #[error(transparent)]
    Learner(#[from] ppo_learner::Error),
    #[error(transparent)]
    Queue(#[from] rlhf_queue::Error),
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, Error>;
