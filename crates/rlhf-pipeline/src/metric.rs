//! The records of a run's `metrics.jsonl`, one per logged training step, evaluation or alarm,
//! tagged by `stage`: the report plots them and a resumed stage trims the ones it will write
//! again ([`crate::run_dir::RunDir::forget_metrics_after`] reads `stage` and `step`).

use std::collections::BTreeMap;

use ppo_learner::StepStats;
use serde::Serialize;

use crate::eval::EvalPoint;
use crate::gold_pairs::{BestOfK, GoldPairAccuracy};

#[derive(Debug, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Metric<'a> {
    /// SFT's loss, the mean over the steps since the last record.
    Sft { step: u64, loss: f64 },
    /// The shares of each answer type among the SFT model's greedy answers.
    SftEval { greedy_train: &'a BTreeMap<String, f64>, greedy_heldout: &'a BTreeMap<String, f64> },
    /// One reward-model step's ranking loss.
    Rm { step: u64, loss: f64 },
    /// The trained reward model on held-out rankings (the ceiling and the gold figures only
    /// where the bundled world knows the gold preference).
    RmEval {
        heldout_accuracy: f64,
        noise_ceiling: Option<f64>,
        train_accuracy: f64,
        gold_pairs: &'a [GoldPairAccuracy],
        best_of_k: Option<&'a BestOfK>,
    },
    /// One PPO step: the learner's statistics and where the step's time went.
    Ppo {
        #[serde(flatten)]
        stats: &'a StepStats,
        rollout_seconds: f64,
        step_seconds: f64,
    },
    /// A PPO evaluation, without its sample responses (those stay in the run's state).
    Eval(EvalPoint),
    /// A reward-hacking alarm raised at `step`.
    Alarm { step: u64, message: &'a str },
}

impl Metric<'_> {
    /// The record of `point`, its samples left out.
    pub fn eval(point: &EvalPoint) -> Metric<'static> {
        Metric::Eval(EvalPoint { samples: vec![], ..point.clone() })
    }
}
