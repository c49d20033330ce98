//! The scorer as a service: a worker thread moves rollouts from the raw stream to the scored
//! stream in batches, and a unary `Score` RPC serves clients directly.
//!
//! The worker acknowledges a raw entry only after its scored result is published, and first
//! takes over entries another scorer held for longer than `claim_after` (it died). A rollout the
//! model cannot score (a non-finite score) is left unacknowledged, so it is retried and, after
//! the queue's delivery limit, dead-lettered; the rest of its batch goes on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rlhf_proto::v1::reward_scorer_server::{RewardScorer as ScorerRpc, RewardScorerServer};
use rlhf_proto::v1::{ScoreRequest, ScoreResponse};
use rlhf_queue::{Delivery, Queue, Traced};
use rlhf_rpc::trace::Hop;
use rlhf_types::{Rollout, ScoredRollout};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::{Result, RewardScorer};

/// Settings of the scorer service.
#[derive(Debug, Clone)]
pub struct ScorerServiceConfig {
    /// Consumer name in the raw stream's group; unique per scorer process.
    pub consumer: String,
    /// Rollouts scored per forward pass.
    pub batch: usize,
    /// Entries pending with a consumer this long are taken over.
    pub claim_after: Duration,
}

impl Default for ScorerServiceConfig {
    fn default() -> Self {
        ScorerServiceConfig { consumer: "scorer-0".into(), batch: 64, claim_after: Duration::from_secs(30) }
    }
}

struct Service(Arc<tokio::sync::OnceCell<Arc<RewardScorer>>>);

#[tonic::async_trait]
impl ScorerRpc for Service {
    async fn score(&self, request: Request<ScoreRequest>) -> std::result::Result<Response<ScoreResponse>, Status> {
        let hop = Hop::from_metadata("scorer.score", request.metadata());
        let scorer = self.0.get().cloned().ok_or_else(|| Status::unavailable("the reward model is still loading"))?;
        let rollouts = request
            .into_inner()
            .rollouts
            .into_iter()
            .map(Rollout::try_from)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let scored = tokio::task::spawn_blocking(move || hop.span.in_scope(|| scorer.score(&rollouts)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ScoreResponse { scored: scored.into_iter().map(Into::into).collect() }))
    }
}

/// Scores one batch of deliveries, publishes the results with their trace context, and
/// acknowledges what was published; returns how many were moved.
fn score_batch(
    scorer: &RewardScorer,
    deliveries: Vec<Delivery<Rollout>>,
    raw: &dyn Queue<Rollout>,
    scored: &dyn Queue<ScoredRollout>,
) -> Result<usize> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let rollouts: Vec<Rollout> = deliveries.iter().map(|d| d.item.clone()).collect();
    // One bad rollout must not hold its whole batch back: fall back to one at a time.
    let results: Vec<Option<ScoredRollout>> = match scorer.score(&rollouts) {
        Ok(all) => all.into_iter().map(Some).collect(),
        Err(_) => rollouts
            .iter()
            .map(|r| match scorer.score(std::slice::from_ref(r)) {
                Ok(mut one) => one.pop(),
                Err(e) => {
                    tracing::warn!(rollout = %r.rollout_id, error = %e, "left unacknowledged");
                    None
                }
            })
            .collect(),
    };
    let mut publish = vec![];
    let mut done = vec![];
    for (delivery, result) in deliveries.iter().zip(results) {
        if let Some(result) = result {
            let hop = Hop::start("scorer.score_rollout", delivery.traceparent.as_deref());
            publish.push(Traced { item: result, traceparent: Some(hop.header()) });
            done.push(delivery.id.clone());
        }
    }
    scored.push_traced(publish)?;
    raw.ack(&done)?;
    Ok(done.len())
}

/// Moves rollouts from `raw` to `scored` until `stop` is set.
pub fn work(
    scorer: &RewardScorer,
    config: &ScorerServiceConfig,
    raw: &dyn Queue<Rollout>,
    scored: &dyn Queue<ScoredRollout>,
    stop: &AtomicBool,
) {
    // Entries a dead scorer held first, then new ones.
    let round = || -> Result<usize> {
        let taken =
            score_batch(scorer, raw.claim_stale(&config.consumer, config.claim_after, config.batch)?, raw, scored)?;
        let fresh = raw.pop(&config.consumer, config.batch, Duration::from_millis(200))?;
        Ok(taken + score_batch(scorer, fresh, raw, scored)?)
    };
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = round() {
            tracing::error!(error = %e, "scoring batch failed; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Loads the judges with `load` (health is NOT_SERVING until then), then scores from `raw` into
/// `scored` and serves `Score` on `listener` until `shutdown` resolves.
pub async fn run<L>(
    config: ScorerServiceConfig,
    load: L,
    raw: Arc<dyn Queue<Rollout>>,
    scored: Arc<dyn Queue<ScoredRollout>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    L: FnOnce() -> std::result::Result<RewardScorer, String> + Send + 'static,
{
    let (health, health_service) = rlhf_rpc::health();
    rlhf_rpc::set_health::<RewardScorerServer<Service>>(&health, false).await;
    let cell: Arc<tokio::sync::OnceCell<Arc<RewardScorer>>> = Arc::new(tokio::sync::OnceCell::new());
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (cell, stop, health) = (cell.clone(), stop.clone(), health.clone());
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || -> std::result::Result<(), String> {
            let scorer = Arc::new(load()?);
            let _ = cell.set(scorer.clone());
            handle.block_on(async {
                rlhf_rpc::set_health::<RewardScorerServer<Service>>(&health, true).await;
            });
            tracing::info!(consumer = %config.consumer, "reward model loaded; scoring");
            work(&scorer, &config, raw.as_ref(), scored.as_ref(), &stop);
            Ok(())
        })
    };
    let service = RewardScorerServer::new(Service(cell.clone()))
        .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
    let served = rlhf_rpc::serve(listener, Routes::new(health_service).add_service(service), shutdown).await;
    stop.store(true, Ordering::SeqCst);
    if cell.get().is_none() {
        // Still waiting for the reward model: nothing to drain, and the loader cannot be
        // interrupted; the thread ends with the process.
        tracing::info!("stopped before the reward model was loaded");
        served?;
        return Ok(());
    }
    let worked = tokio::task::spawn_blocking(move || worker.join()).await;
    served?;
    match worked {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        _ => Err("the scoring worker panicked".into()),
    }
}
