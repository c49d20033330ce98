//! The learner's own gRPC face: `GetStatus`, `SaveCheckpoint` and `GetJudges`, plus health
//! (SERVING while it trains). The training loop runs elsewhere (the pipeline's PPO stage) and
//! reports into a [`StatusBoard`]; a checkpoint request is taken up by the loop after its
//! current step; the judges it announces there are what the scorers load.

use std::future::Future;
use std::sync::{Arc, Mutex};

use rlhf_proto::judges::{Judges, encode_judges};
use rlhf_proto::v1::ppo_learner_server::{PpoLearner as LearnerRpc, PpoLearnerServer};
use rlhf_proto::v1::{
    GetJudgesRequest, JudgesChunk, LearnerStatus, LearnerStatusRequest, SaveCheckpointRequest, SaveCheckpointResponse,
};
use rlhf_rpc::auth::Role;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::StepStats;

/// Reads the judges when a scorer asks for them (from the run directory), so the learner does
/// not keep a second copy of two models in memory.
pub type JudgesLoader = Arc<dyn Fn() -> Result<Judges, String> + Send + Sync>;

/// Shared between the training loop and the service.
#[derive(Default)]
pub struct StatusBoard {
    status: Mutex<LearnerStatus>,
    waiting: Mutex<Vec<oneshot::Sender<(String, u64)>>>,
    judges: Mutex<Option<(u64, JudgesLoader)>>,
    readiness: Mutex<Option<rlhf_rpc::Readiness>>,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard").field("status", &self.status()).field("judges", &self.judges_version()).finish()
    }
}

impl StatusBoard {
    /// From now on the scorers are to judge with `version`, which `load` reads.
    pub fn announce_judges(&self, version: u64, load: JudgesLoader) {
        if let Ok(mut j) = self.judges.lock() {
            *j = Some((version, load));
        }
    }

    /// From now on health follows `ready` (the learner cannot train while Redis is away).
    pub fn set_readiness(&self, ready: rlhf_rpc::Readiness) {
        if let Ok(mut r) = self.readiness.lock() {
            *r = Some(ready);
        }
    }

    /// The judges version announced, if any.
    pub fn judges_version(&self) -> Option<u64> {
        self.judges.lock().ok().and_then(|j| j.as_ref().map(|(v, _)| *v))
    }

    fn judges(&self) -> Option<(u64, JudgesLoader)> {
        self.judges.lock().ok().and_then(|j| j.clone())
    }

    /// Records a finished step for `GetStatus` and `/metrics`.
    pub fn record(&self, stats: &StepStats) {
        let m = rlhf_rpc::metrics::learner();
        m.rollouts.inc_by(stats.rollouts as u64);
        m.deduplicated.inc_by(stats.duplicates_skipped as u64);
        m.policy_version.set(stats.policy_version as i64);
        m.reward.set(stats.reward);
        m.kl.set(stats.kl);
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

type JudgesStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<JudgesChunk, Status>> + Send>>;

#[tonic::async_trait]
impl LearnerRpc for Service {
    type GetJudgesStream = JudgesStream;

    async fn get_judges(&self, request: Request<GetJudgesRequest>) -> Result<Response<JudgesStream>, Status> {
        let wanted = request.into_inner().judges_version;
        let (version, load) = self.0.judges().ok_or_else(|| Status::unavailable("no judges announced yet"))?;
        if wanted != 0 && wanted != version {
            return Err(Status::not_found(format!("judges version {wanted} is not this learner's ({version})")));
        }
        let chunks = tokio::task::spawn_blocking(move || {
            let judges = load().map_err(Status::internal)?;
            encode_judges(version, &judges).map_err(|e| Status::internal(e.to_string()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(version, chunks = chunks.len(), "sending the judges to a scorer");
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

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

/// Who may call what on the learner: scorers fetch the judges; status and checkpoints are an
/// admin's.
pub const ACCESS: &[(&str, &[Role])] =
    &[("/rlhf.v1.PpoLearner/GetJudges", &[Role::Scorer, Role::Admin]), ("/rlhf.v1.PpoLearner/", &[Role::Admin])];

/// Serves the learner's status on `listener` with `security` until `shutdown` resolves; health
/// follows the board's readiness when one is set.
pub async fn run(
    board: Arc<StatusBoard>,
    listener: TcpListener,
    security: rlhf_rpc::Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = rlhf_rpc::health();
    rlhf_rpc::set_health::<PpoLearnerServer<Service>>(&health, true).await;
    let ready = board.readiness.lock().ok().and_then(|r| r.clone());
    let service = PpoLearnerServer::new(Service(board))
        .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
    let names = [<PpoLearnerServer<Service> as tonic::server::NamedService>::NAME];
    let routes = Routes::new(health_service).add_service(service);
    rlhf_rpc::serve_with(listener, routes, &names, health.clone(), security.options(ACCESS, ready), shutdown).await
}
