//! The learner as a process of the distributed run: the rollout backend over the replicas and
//! the streams, the learner's own gRPC face beside it, and the stages that use them.
//!
//! The stages themselves (SFT, collection, reward model, the PPO loop with its evaluation) are
//! the pipeline's; the process that wires the learner passes them in as `work`, so this crate
//! knows neither the pipeline nor any other service.

use std::sync::Arc;

use rlhf_queue::Queue;
use rlhf_types::{ScoredRollout, ScoringRequest};
use tokio::net::TcpListener;

use crate::{ClusterBackend, ClusterConfig, Error, Result, StatusBoard};

/// What the learner process is told on its command line.
#[derive(Debug, Clone)]
pub struct LearnerOptions {
    /// Generator replica URLs.
    pub generators: Vec<String>,
    pub cluster: ClusterConfig,
    /// The learner's own service: TLS and who may fetch judges or ask for checkpoints.
    pub security: rlhf_rpc::Security,
}

/// Runs `work` with a [`ClusterBackend`] over `raw` and `scored` and a [`StatusBoard`] served on
/// `listener` (GetStatus, SaveCheckpoint, health: NOT_SERVING while Redis is unreachable) for as
/// long as `work` runs.
pub fn serve<T>(
    listener: std::net::TcpListener,
    options: LearnerOptions,
    raw: Arc<dyn Queue<ScoringRequest>>,
    scored: Arc<dyn Queue<ScoredRollout>>,
    work: impl FnOnce(&mut ClusterBackend, &StatusBoard) -> T,
) -> Result<T> {
    rlhf_rpc::metrics::learner();
    let board = Arc::new(StatusBoard::default());
    {
        let (raw, scored) = (raw.clone(), scored.clone());
        // Asked a few times a second, even while the loop waits out an outage, so it also keeps
        // the link metrics.
        board.set_readiness(Arc::new(move || {
            let streams = rlhf_rpc::metrics::streams();
            let (r, s) = (raw.health(), scored.health());
            streams.observe_link("rollouts", r.reachable, r.outages, r.groups_recreated);
            streams.observe_link("scored", s.reachable, s.outages, s.groups_recreated);
            r.reachable && s.reachable
        }));
    }
    let mut backend = ClusterBackend::new(&options.generators, raw, scored, options.cluster)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _inside = backend.runtime().enter();
        listener.set_nonblocking(true).map_err(|e| Error::Rollouts(format!("learner listener: {e}")))?;
        let listener =
            TcpListener::from_std(listener).map_err(|e| Error::Rollouts(format!("learner listener: {e}")))?;
        backend.runtime().spawn(crate::run(board.clone(), listener, options.security, async {
            let _ = stopped.await;
        }))
    };
    let outcome = work(&mut backend, &board);
    tracing::info!(counters = ?backend.counters(), replicas = ?backend.replicas(), "rollout backend");
    let _ = stop.send(());
    match backend.runtime().block_on(server) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "learner service ended with an error"),
        Err(e) => tracing::warn!(error = %e, "learner service task failed"),
    }
    Ok(outcome)
}
