//! The distributed rollout backend: rollout requests fan out to generator replicas over
//! gRPC, their rollouts go into the raw Redis stream, a scorer service moves them to the scored
//! stream, and the learner reads them back.
//!
//! The learner pushes each request's rollouts to the raw stream once (a retried request yields
//! the same ids, which are skipped), then reads the scored stream until it has every rollout of
//! the step exactly once. Entries it does not need (duplicates, rollouts of another learner
//! incarnation, stale versions) are acknowledged at once; the ones it trains on only after the
//! checkpoint that covers them.
//!
//! Redis going away is waited out by the queues themselves. Redis coming back without its data
//! (no persistence) shows as a re-created consumer group; the learner then pushes again every
//! rollout of the step whose scored copy it does not hold, so a step never trains on part of
//! its batch and never waits for entries that no longer exist.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use rlhf_model::Config;
use rlhf_queue::{Delivery, EntryId, Queue, Traced};
use rlhf_types::{GenerateRequest, Rollout, RolloutId, ScoredRollout, ScoringRequest};

use crate::backend::{RolloutBackend, RolloutMode};
use crate::fanout::{Fanout, FanoutConfig, ReplicaReport};
use crate::{Error, Result};

/// Knobs of the distributed backend.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub fanout: FanoutConfig,
    pub prompts_per_request: usize,
    /// Rollouts at most this many versions behind the learner are trained on (0: on-policy).
    pub max_staleness: u64,
    /// A step fails when its scored rollouts have not all arrived after this long.
    pub scored_timeout: Duration,
    /// The learner's consumer name in the scored stream's group.
    pub consumer: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            fanout: FanoutConfig::default(),
            prompts_per_request: 16,
            max_staleness: 0,
            scored_timeout: Duration::from_secs(300),
            consumer: "learner".into(),
        }
    }
}

/// What the backend did so far, for tests and for seeing where a step's time goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterCounters {
    pub raw_pushed: u64,
    pub duplicates_dropped: u64,
    pub foreign_dropped: u64,
    pub stale_dropped: u64,
    /// Scored by judges other than the announced version, and sent to be scored again.
    pub rescored: u64,
    /// Pushed again because Redis lost its streams (it came back without its data) before
    /// their scored copies arrived.
    pub repushed: u64,
    /// From the first request sent to the last rollout pushed to the raw stream.
    pub generate_seconds: f64,
    /// From then until the last scored rollout of the step arrived.
    pub scored_wait_seconds: f64,
    /// Encoding and pushing new weights to the replicas.
    pub publish_seconds: f64,
}

pub struct ClusterBackend {
    runtime: tokio::runtime::Runtime,
    fanout: Fanout,
    raw: Arc<dyn Queue<ScoringRequest>>,
    scored: Arc<dyn Queue<ScoredRollout>>,
    config: ClusterConfig,
    chunks: Arc<Vec<rlhf_proto::v1::WeightChunk>>,
    /// The version last published.
    version: u64,
    /// This learner incarnation's epoch (its start time): replicas accept its versions even
    /// when an earlier, crashed incarnation left them on a higher version number.
    epoch: u64,
    counters: ClusterCounters,
}

impl std::fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBackend").field("fanout", &self.fanout).field("counters", &self.counters).finish()
    }
}

impl ClusterBackend {
    /// Replicas at `generators`; `raw` and `scored` are the two streams around the scorer.
    /// Entries this consumer held when an earlier incarnation died are released first: the
    /// steps they belonged to were not checkpointed and will be run again.
    pub fn new(
        generators: &[String],
        raw: Arc<dyn Queue<ScoringRequest>>,
        scored: Arc<dyn Queue<ScoredRollout>>,
        config: ClusterConfig,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Rollouts(format!("tokio runtime: {e}")))?;
        let fanout = {
            let _guard = runtime.enter();
            Fanout::new(generators, config.fanout.clone())?
        };
        loop {
            let left = scored.claim_stale(&config.consumer, Duration::ZERO, 1_000)?;
            if left.is_empty() {
                break;
            }
            tracing::info!(entries = left.len(), "released entries of an earlier learner incarnation");
            scored.ack(&left.iter().map(|d| d.id.clone()).collect::<Vec<_>>())?;
        }
        Ok(ClusterBackend {
            runtime,
            fanout,
            raw,
            scored,
            config,
            chunks: Arc::new(vec![]),
            version: 0,
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
            counters: ClusterCounters::default(),
        })
    }

    /// The runtime the backend's gRPC clients run on; the learner's own service may share it.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Samples `requests` on the replicas with the version last published, without the
    /// queues: preference collection needs responses, not scores. One `Vec` per request.
    pub fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Rollout>>> {
        if self.chunks.is_empty() {
            return Err(Error::Rollouts("no policy published to the generators yet".into()));
        }
        let index: HashMap<&str, usize> =
            requests.iter().enumerate().map(|(i, r)| (r.request_id.as_str(), i)).collect();
        let mut out: Vec<Vec<Rollout>> = vec![vec![]; requests.len()];
        self.runtime.block_on(self.fanout.generate(
            requests,
            self.version,
            self.chunks.clone(),
            |request, rollouts, _| {
                out[index[request.request_id.as_str()]] = rollouts;
            },
        ))?;
        Ok(out)
    }

    /// Records the streams' lengths and the replicas' versions for `/metrics`.
    fn observe(&self) {
        let ok = |r: rlhf_queue::Result<usize>| r.ok().map(|n| n as u64);
        let streams = rlhf_rpc::metrics::streams();
        streams.observe("rollouts", ok(self.raw.stored()), ok(self.raw.pending()), ok(self.raw.dead_letters()));
        streams.observe("scored", ok(self.scored.stored()), ok(self.scored.pending()), ok(self.scored.dead_letters()));
        let versions = &rlhf_rpc::metrics::learner().replica_weight_version;
        versions.reset();
        for r in self.fanout.report() {
            versions.with_label_values(&[&r.url]).set(r.serving.map_or(-1.0, |v| v as f64));
        }
    }

    /// Times either stream's consumer group had to be created again: each is a Redis that came
    /// back without its data.
    fn data_losses(&self) -> u64 {
        self.raw.health().groups_recreated + self.scored.health().groups_recreated
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    pub fn replicas(&self) -> Vec<ReplicaReport> {
        self.fanout.report()
    }
}

impl RolloutBackend for ClusterBackend {
    fn mode(&self) -> RolloutMode {
        RolloutMode::Distributed { prompts_per_request: self.config.prompts_per_request.max(1) }
    }

    /// This learner incarnation's epoch: a restarted learner announces new judges, so a scorer
    /// never scores its rollouts with what it loaded for the one before.
    fn judges_version(&self) -> u64 {
        self.epoch
    }

    fn publish(&mut self, version: u64, weights: &HashMap<String, Tensor>, config: &Config, pad_id: u32) -> Result<()> {
        let started = Instant::now();
        self.chunks = Arc::new(rlhf_proto::weights::encode_for_epoch(self.epoch, version, weights, config, pad_id)?);
        self.version = version;
        let chunks = self.chunks.clone();
        let serving = self.runtime.block_on(self.fanout.publish(version, chunks));
        self.counters.publish_seconds += started.elapsed().as_secs_f64();
        tracing::debug!(version, serving, "published policy version");
        Ok(())
    }

    fn rollouts(&mut self, version: u64, requests: Vec<GenerateRequest>) -> Result<Vec<Delivery<ScoredRollout>>> {
        let expected: HashSet<RolloutId> = requests.iter().flat_map(GenerateRequest::rollout_ids).collect();
        let started = Instant::now();
        let losses_before = self.data_losses();
        // Every request pushed this step, kept until its scored copy arrives: if Redis loses its
        // streams, what it lost is pushed again rather than waited for forever.
        let mut pushed: HashMap<RolloutId, Traced<ScoringRequest>> = HashMap::new();
        let mut push_error = None;
        let raw = self.raw.clone();
        let judges_version = self.epoch;
        let counters = &mut self.counters;
        self.runtime.block_on(self.fanout.generate(
            &requests,
            version,
            self.chunks.clone(),
            |_, rollouts, traceparent| {
                let fresh: Vec<Traced<ScoringRequest>> = rollouts
                    .into_iter()
                    .filter(|r| !pushed.contains_key(&r.rollout_id))
                    .map(|rollout| Traced {
                        item: ScoringRequest { rollout, judges_version },
                        traceparent: Some(traceparent.to_string()),
                    })
                    .collect();
                for request in &fresh {
                    pushed.insert(request.item.rollout.rollout_id.clone(), request.clone());
                }
                counters.raw_pushed += fresh.len() as u64;
                if let Err(e) = raw.push_traced(fresh) {
                    push_error.get_or_insert(e);
                }
            },
        ))?;
        if let Some(e) = push_error {
            return Err(e.into());
        }
        let generated = Instant::now();
        self.counters.generate_seconds += (generated - started).as_secs_f64();

        let deadline = Instant::now() + self.config.scored_timeout;
        let mut losses = losses_before;
        let mut got: HashMap<RolloutId, Delivery<ScoredRollout>> = HashMap::with_capacity(expected.len());
        while got.len() < expected.len() {
            if Instant::now() > deadline {
                return Err(Error::Rollouts(format!(
                    "{} of {} scored rollouts arrived within {:?}: is the scorer running?",
                    got.len(),
                    expected.len(),
                    self.config.scored_timeout
                )));
            }
            let batch =
                self.scored.pop(&self.config.consumer, expected.len() - got.len(), Duration::from_millis(500))?;
            let mut unused: Vec<EntryId> = vec![];
            let mut again: Vec<Traced<ScoringRequest>> = vec![];
            for delivery in batch {
                let rollout = &delivery.item.rollout;
                if !expected.contains(&rollout.rollout_id) {
                    self.counters.foreign_dropped += 1;
                    unused.push(delivery.id);
                } else if rollout.policy_version + self.config.max_staleness < version {
                    self.counters.stale_dropped += 1;
                    unused.push(delivery.id);
                } else if got.contains_key(&rollout.rollout_id) {
                    self.counters.duplicates_dropped += 1;
                    rlhf_rpc::metrics::learner().deduplicated.inc();
                    unused.push(delivery.id);
                } else if delivery.item.judges_version != self.epoch {
                    // Never trained on: judged by other models than the ones announced.
                    tracing::warn!(rollout = %rollout.rollout_id, judged_by = delivery.item.judges_version,
                        announced = self.epoch, "scored by other judges; scoring it again");
                    self.counters.rescored += 1;
                    again.push(Traced {
                        item: ScoringRequest { rollout: rollout.clone(), judges_version: self.epoch },
                        traceparent: delivery.traceparent.clone(),
                    });
                    unused.push(delivery.id);
                } else {
                    // The rollout's trace ends back at the learner.
                    drop(rlhf_rpc::trace::Hop::start("learner.consume", delivery.traceparent.as_deref()));
                    got.insert(rollout.rollout_id.clone(), delivery);
                }
            }
            self.raw.push_traced(again)?;
            self.scored.ack(&unused)?;
            if self.data_losses() != losses {
                losses = self.data_losses();
                let lost: Vec<Traced<ScoringRequest>> =
                    pushed.values().filter(|r| !got.contains_key(&r.item.rollout.rollout_id)).cloned().collect();
                tracing::error!(
                    lost = lost.len(),
                    "Redis came back without its streams: pushing this step's rollouts that have not come back again"
                );
                self.counters.repushed += lost.len() as u64;
                self.raw.push_traced(lost)?;
            }
        }
        self.counters.scored_wait_seconds += generated.elapsed().as_secs_f64();
        self.observe();
        let mut deliveries: Vec<Delivery<ScoredRollout>> = got.into_values().collect();
        deliveries.sort_by(|a, b| a.item.rollout.rollout_id.cmp(&b.item.rollout.rollout_id));
        Ok(deliveries)
    }

    fn acknowledge(&mut self, ids: Vec<EntryId>) -> Result<()> {
        Ok(self.scored.ack(&ids)?)
    }
}
