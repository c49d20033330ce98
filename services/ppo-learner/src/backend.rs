//! Where a PPO step's rollouts come from and where new policy versions go.
//!
//! - [`crate::Embedded`]: one process: a generator and a scorer the learner calls directly, and
//!   in-process queues.
//! - [`crate::ClusterBackend`]: generator replicas over gRPC, Redis streams, a scorer service.
//!
//! The backend carries rollouts and weights only; the learner's status goes out through
//! [`crate::StatusBoard`].

use std::collections::HashMap;

use candle_core::Tensor;
use rlhf_model::Config;
use rlhf_queue::{Delivery, EntryId};
use rlhf_types::{GenerateRequest, ScoredRollout};

use crate::Result;

/// How a backend wants a step's prompts cut into generation requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutMode {
    /// One process: a step is one request, and rollout ids are the same on every run of a
    /// seed, so a resumed run repeats exactly what an uninterrupted one would have done.
    OneProcess,
    /// Replicas: requests of at most `prompts_per_request` prompts, spread over the replicas;
    /// rollout ids carry the learner incarnation, so entries an earlier, crashed learner left in
    /// the streams never pass for this one's.
    Distributed { prompts_per_request: usize },
}

/// Where a PPO step's rollouts come from and where new policy versions go.
pub trait RolloutBackend {
    fn mode(&self) -> RolloutMode;
    /// The judges version this backend asks its scorers for (stamped on every rollout it sends
    /// to be scored, and checked on every scored rollout it hands back): what the learner
    /// announces on its `StatusBoard`.
    fn judges_version(&self) -> u64;
    /// Makes `version` (these weights) the one the generators serve.
    fn publish(&mut self, version: u64, weights: &HashMap<String, Tensor>, config: &Config, pad_id: u32) -> Result<()>;
    /// The scored rollouts of `requests`, sampled by policy `version`: each rollout exactly once.
    fn rollouts(&mut self, version: u64, requests: Vec<GenerateRequest>) -> Result<Vec<Delivery<ScoredRollout>>>;
    /// Releases queue entries consumed by steps that are now checkpointed.
    fn acknowledge(&mut self, ids: Vec<EntryId>) -> Result<()>;
}
