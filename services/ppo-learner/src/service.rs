//! The learner's own gRPC face: `GetStatus` and `SaveCheckpoint`, plus health (SERVING while
//! it trains). The training loop runs elsewhere (the pipeline's PPO stage) and reports into a
//! [`StatusBoard`]; a checkpoint request is taken up by the loop after its current step.

use std::future::Future;
use std::sync::{Arc, Mutex};

use rlhf_proto::v1::ppo_learner_server::{PpoLearner as LearnerRpc, PpoLearnerServer};
use rlhf_proto::v1::{LearnerStatus, LearnerStatusRequest, SaveCheckpointRequest, SaveCheckpointResponse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::StepStats;

/// Shared between the training loop and the service.
#[derive(Debug, Default)]
pub struct StatusBoard {
    status: Mutex<LearnerStatus>,
    waiting: Mutex<Vec<oneshot::Sender<(String, u64)>>>,
}

impl StatusBoard {
    pub fn record(&self, stats: &StepStats) {
        if let Ok(mut s) = self.status.lock() {
            *s = LearnerStatus {
                step: stats.step,
                policy_version: stats.policy_version,
                kl_coef: stats.kl_coef,
                last_mean_reward: stats.reward,
                last_kl: stats.kl,
            };
        }
    }

    pub fn status(&self) -> LearnerStatus {
        self.status.lock().map(|s| *s).unwrap_or_default()
    }

    /// True when a client waits for a checkpoint.
    pub fn checkpoint_wanted(&self) -> bool {
        self.waiting.lock().is_ok_and(|w| !w.is_empty())
    }

    /// Tells every waiting client where the checkpoint went.
    pub fn checkpointed(&self, path: &str, step: u64) {
        if let Ok(mut waiting) = self.waiting.lock() {
            for tx in waiting.drain(..) {
                let _ = tx.send((path.to_string(), step));
            }
        }
    }
}

struct Service(Arc<StatusBoard>);

#[tonic::async_trait]
impl LearnerRpc for Service {
    async fn get_status(&self, _: Request<LearnerStatusRequest>) -> Result<Response<LearnerStatus>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn save_checkpoint(
        &self,
        _: Request<SaveCheckpointRequest>,
    ) -> Result<Response<SaveCheckpointResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        self.0.waiting.lock().map_err(|_| Status::internal("lock poisoned"))?.push(tx);
        let (path, step) = rx.await.map_err(|_| Status::aborted("training ended before the next checkpoint"))?;
        Ok(Response::new(SaveCheckpointResponse { path, step }))
    }
}

/// Serves the learner's status on `listener` until `shutdown` resolves.
pub async fn run(
    board: Arc<StatusBoard>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = rlhf_rpc::health();
    rlhf_rpc::set_health::<PpoLearnerServer<Service>>(&health, true).await;
    rlhf_rpc::serve(listener, Routes::new(health_service).add_service(PpoLearnerServer::new(Service(board))), shutdown)
        .await
}
