//! The one-process backend: a generator and a scorer in the learner's own process, joined by
//! in-process queues, so that a run on one machine takes the same path as a distributed one.
//!
//! The learner does not know the generator and scorer crates (a service never depends on
//! another); the process that wires them together implements [`LocalGenerator`] and
//! [`LocalScorer`] for them.

use std::collections::HashMap;
use std::time::Duration;

use candle_core::Tensor;
use rlhf_model::Config;
use rlhf_queue::{Delivery, EntryId, InProcessQueue, Queue};
use rlhf_types::{GenerateRequest, Rollout, ScoredRollout, ScoringRequest};

use crate::backend::{RolloutBackend, RolloutMode};
use crate::{Error, Result};

/// Any error of a local generator or scorer.
pub type LocalError = Box<dyn std::error::Error + Send + Sync>;

/// A generator replica in this process.
pub trait LocalGenerator {
    /// Serves `version` of the policy from now on (the first call builds the model).
    fn serve(
        &mut self,
        version: u64,
        weights: &HashMap<String, Tensor>,
        config: &Config,
        pad_id: u32,
    ) -> std::result::Result<(), LocalError>;
    /// Samples `request` with the version served; an error before the first `serve`.
    fn generate(&self, request: &GenerateRequest) -> std::result::Result<Vec<Rollout>, LocalError>;
}

/// The frozen judges in this process.
pub trait LocalScorer {
    /// Scores what waits in `raw` into `scored`, acknowledging each raw entry only after its
    /// result is published.
    fn drain(
        &self,
        consumer: &str,
        raw: &dyn Queue<ScoringRequest>,
        scored: &dyn Queue<ScoredRollout>,
    ) -> std::result::Result<usize, LocalError>;
}

/// The one-process backend.
pub struct Embedded<G, S> {
    generator: G,
    scorer: S,
    raw: InProcessQueue<ScoringRequest>,
    scored: InProcessQueue<ScoredRollout>,
}

impl<G, S> std::fmt::Debug for Embedded<G, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl<G: LocalGenerator, S: LocalScorer> Embedded<G, S> {
    pub fn new(generator: G, scorer: S) -> Self {
        Embedded { generator, scorer, raw: InProcessQueue::new("rollouts"), scored: InProcessQueue::new("scored") }
    }
}

fn local(e: LocalError) -> Error {
    Error::Local(e.to_string())
}

impl<G: LocalGenerator, S: LocalScorer> RolloutBackend for Embedded<G, S> {
    fn mode(&self) -> RolloutMode {
        RolloutMode::OneProcess
    }

    /// The local scorer's: one process has one set of judges.
    fn judges_version(&self) -> u64 {
        0
    }

    fn publish(&mut self, version: u64, weights: &HashMap<String, Tensor>, config: &Config, pad_id: u32) -> Result<()> {
        self.generator.serve(version, weights, config, pad_id).map_err(local)
    }

    fn rollouts(&mut self, _version: u64, requests: Vec<GenerateRequest>) -> Result<Vec<Delivery<ScoredRollout>>> {
        for request in &requests {
            let rollouts = self.generator.generate(request).map_err(local)?;
            self.raw
                .push(rollouts.into_iter().map(|rollout| ScoringRequest { rollout, judges_version: 0 }).collect())?;
        }
        self.scorer.drain("scorer-0", &self.raw, &self.scored).map_err(local)?;
        Ok(self.scored.pop("learner", usize::MAX, Duration::ZERO)?)
    }

    fn acknowledge(&mut self, ids: Vec<EntryId>) -> Result<()> {
        Ok(self.scored.ack(&ids)?)
    }
}
