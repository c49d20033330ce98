//! The scorer as a service: a worker thread moves rollouts from the raw stream to the scored
//! stream in batches, and a unary `Score` RPC serves clients directly.
//!
//! The judges come from the learner (`FetchJudges`): the current ones at start, and whichever
//! version a raw entry asks for when it is not the one loaded (a restarted learner announces a
//! new version). Entries for a version the learner no longer knows belong to a learner that
//! died; they are acknowledged and dropped.
//!
//! The worker acknowledges a raw entry only after its scored result is published, and first
//! takes over entries another scorer left untouched for longer than `claim_after` (it died).
//! While it scores a batch it touches the batch's entries every third of `claim_after`
//! ([`Queue::keep_alive`]), so the threshold can be short without a slow batch being stolen. A rollout the
//! model cannot score (a non-finite score) is left unacknowledged, so it is retried and, after
//! the queue's delivery limit, dead-lettered; the rest of its batch goes on.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rlhf_proto::v1::reward_scorer_server::{RewardScorer as ScorerRpc, RewardScorerServer};
use rlhf_proto::v1::{ScoreRequest, ScoreResponse};
use rlhf_queue::{Delivery, Queue, Traced};
use rlhf_rpc::auth::Role;
use rlhf_rpc::trace::Hop;
use rlhf_types::{Rollout, ScoredRollout, ScoringRequest};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::{FetchJudges, Result, RewardScorer};

/// Settings of the scorer service.
#[derive(Debug, Clone)]
pub struct ScorerServiceConfig {
    /// Consumer name in the raw stream's group; unique per scorer process.
    pub consumer: String,
    /// Rollouts scored per forward pass.
    pub batch: usize,
    /// Entries a consumer has not touched for this long are taken over (it died).
    pub claim_after: Duration,
    /// TLS and the role tokens: `Score` from the learner or an admin.
    pub security: rlhf_rpc::Security,
    /// Where the judges run (`--device`).
    pub device: candle_core::Device,
}

/// Who may call what on a scorer ([`rlhf_rpc::auth::Access`]).
pub const ACCESS: &[(&str, &[Role])] = &[("/rlhf.v1.RewardScorer/", &[Role::Learner, Role::Admin])];

impl Default for ScorerServiceConfig {
    fn default() -> Self {
        ScorerServiceConfig {
            consumer: "scorer-0".into(),
            batch: 64,
            claim_after: Duration::from_secs(10),
            security: rlhf_rpc::Security::default(),
            device: candle_core::Device::Cpu,
        }
    }
}

/// Runs `work` while another thread touches `ids` (pending with `consumer`) every `every`, so
/// that no other consumer takes them over however long `work` takes.
pub(crate) fn kept_alive<T, R>(
    queue: &dyn Queue<T>,
    consumer: &str,
    ids: &[rlhf_queue::EntryId],
    every: Duration,
    work: impl FnOnce() -> R,
) -> R {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(every) {
                match queue.keep_alive(consumer, ids) {
                    Ok(held) if held < ids.len() => {
                        tracing::warn!(held, of = ids.len(), "another scorer took over entries of this batch")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not keep this batch's entries alive"),
                }
            }
        });
        let out = work();
        drop(done);
        out
    })
}

/// The judges in use, shared by the worker and the `Score` RPC.
pub(crate) type Current = Arc<RwLock<Option<Arc<RewardScorer>>>>;

struct Service(Current);

#[tonic::async_trait]
impl ScorerRpc for Service {
    async fn score(&self, request: Request<ScoreRequest>) -> std::result::Result<Response<ScoreResponse>, Status> {
        let hop = Hop::from_metadata("scorer.score", request.metadata());
        let scorer = self
            .0
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| Status::unavailable("no judges loaded yet: the learner has not announced them"))?;
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

/// The scores of `deliveries`, `None` for a rollout the model cannot score: one bad rollout
/// must not hold its whole batch back, so a failed batch is scored again one at a time.
fn score_each(scorer: &RewardScorer, deliveries: &[Delivery<ScoringRequest>]) -> Vec<Option<ScoredRollout>> {
    let rollouts: Vec<Rollout> = deliveries.iter().map(|d| d.item.rollout.clone()).collect();
    match scorer.score(&rollouts) {
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
    }
}

/// Scores one batch of deliveries (keeping their entries alive meanwhile), publishes the results with their trace context, and
/// acknowledges what was published; returns how many were moved.
fn score_batch(
    scorer: &RewardScorer,
    deliveries: &[Delivery<ScoringRequest>],
    raw: &dyn Queue<ScoringRequest>,
    scored: &dyn Queue<ScoredRollout>,
    config: &ScorerServiceConfig,
) -> Result<usize> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<rlhf_queue::EntryId> = deliveries.iter().map(|d| d.id.clone()).collect();
    let results = kept_alive(raw, &config.consumer, &ids, config.claim_after / 3, || score_each(scorer, deliveries));
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
    rlhf_rpc::metrics::scorer().rollouts.inc_by(done.len() as u64);
    Ok(done.len())
}

/// The worker: keeps the judges each request asks for and moves requests from `raw` to
/// `scored`.
pub(crate) struct Worker<'a> {
    pub(crate) current: &'a Current,
    pub(crate) fetch: &'a dyn FetchJudges,
    pub(crate) config: &'a ScorerServiceConfig,
    pub(crate) raw: &'a dyn Queue<ScoringRequest>,
    pub(crate) scored: &'a dyn Queue<ScoredRollout>,
}

/// What to do with the requests for one judges version.
enum Judged {
    With(Arc<RewardScorer>),
    /// The learner does not know the version: rollouts of an earlier learner, which no one
    /// waits for.
    Unknown,
}

impl Worker<'_> {
    fn loaded(&self) -> Option<Arc<RewardScorer>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The judges of `version` (0: the current ones), fetched from the learner unless loaded.
    fn judges(&self, version: u64) -> Result<Judged> {
        if let Some(s) = self.loaded().filter(|s| version == 0 || s.version() == version) {
            return Ok(Judged::With(s));
        }
        let Some((version, judges)) = self.fetch.fetch(version).map_err(crate::Error::Model)? else {
            return Ok(Judged::Unknown);
        };
        let scorer = Arc::new(RewardScorer::from_judges(&self.config.device, version, judges)?);
        tracing::info!(version, consumer = %self.config.consumer, "judges loaded from the learner");
        rlhf_rpc::metrics::scorer().judges_version.set(version as i64);
        *self.current.write().map_err(|_| crate::Error::Model("judges lock poisoned".into()))? = Some(scorer.clone());
        Ok(Judged::With(scorer))
    }

    /// Scores `deliveries`, each with the judges version it asks for.
    pub(crate) fn handle(&self, deliveries: Vec<Delivery<ScoringRequest>>) -> Result<usize> {
        let mut by_version: std::collections::BTreeMap<u64, Vec<Delivery<ScoringRequest>>> = Default::default();
        for d in deliveries {
            by_version.entry(d.item.judges_version).or_default().push(d);
        }
        let mut moved = 0;
        for (version, group) in by_version {
            // Version 0 is the one-process scorer's; no learner announces it.
            let judged = if version == 0 { Judged::Unknown } else { self.judges(version)? };
            match judged {
                Judged::With(scorer) => moved += score_batch(&scorer, &group, self.raw, self.scored, self.config)?,
                Judged::Unknown => {
                    tracing::warn!(
                        version,
                        entries = group.len(),
                        "dropping rollouts for judges the learner no longer has"
                    );
                    rlhf_rpc::metrics::scorer().dropped.inc_by(group.len() as u64);
                    self.raw.ack(&group.iter().map(|d| d.id.clone()).collect::<Vec<_>>())?;
                }
            }
        }
        Ok(moved)
    }

    /// What an earlier process under this consumer name held when it died: taken back at once,
    /// not after the claim threshold. Returns how many were scored.
    fn take_back_own(&self) -> Result<usize> {
        let mut moved = 0;
        loop {
            let own = self.raw.own_pending(&self.config.consumer, self.config.batch)?;
            let (held, done) = (own.len(), self.handle(own)?);
            moved += done;
            // Stop when nothing is left, or when what is left cannot be scored (it is retried
            // later and, past the delivery limit, dead-lettered).
            if held == 0 || done == 0 {
                return Ok(moved);
            }
        }
    }

    /// Entries a dead scorer held first, then new ones.
    fn round(&self) -> Result<usize> {
        let taken =
            self.handle(self.raw.claim_stale(&self.config.consumer, self.config.claim_after, self.config.batch)?)?;
        let fresh = self.raw.pop(&self.config.consumer, self.config.batch, Duration::from_millis(200))?;
        Ok(taken + self.handle(fresh)?)
    }
}

/// Records both streams' lengths for `/metrics`.
fn observe_streams(raw: &dyn Queue<ScoringRequest>, scored: &dyn Queue<ScoredRollout>) {
    let ok = |r: rlhf_queue::Result<usize>| r.ok().map(|n| n as u64);
    let streams = rlhf_rpc::metrics::streams();
    streams.observe("rollouts", ok(raw.stored()), ok(raw.pending()), ok(raw.dead_letters()));
    streams.observe("scored", ok(scored.stored()), ok(scored.pending()), ok(scored.dead_letters()));
}

/// Moves rollouts from `raw` to `scored` until `stop` is set, with judges from `fetch`; `ready`
/// is told once the first judges are loaded.
pub fn work(
    fetch: &dyn FetchJudges,
    config: &ScorerServiceConfig,
    raw: &dyn Queue<ScoringRequest>,
    scored: &dyn Queue<ScoredRollout>,
    stop: &AtomicBool,
    current: &Current,
    ready: &dyn Fn(),
) {
    let worker = Worker { current, fetch, config, raw, scored };
    let mut announced = false;
    let mut observed: Option<std::time::Instant> = None;
    let mut took_back = false;
    while !stop.load(Ordering::SeqCst) {
        if observed.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            observe_streams(raw, scored);
            observed = Some(std::time::Instant::now());
        }
        // Load the current judges as soon as the learner has them, so health tells the truth.
        if worker.loaded().is_none() {
            match worker.judges(0) {
                Ok(Judged::With(_)) => ready(),
                Ok(Judged::Unknown) | Err(_) => {
                    if !announced {
                        tracing::info!("waiting for the learner to announce its judges");
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        if !took_back {
            match worker.take_back_own() {
                Ok(n) => {
                    took_back = true;
                    if n > 0 {
                        tracing::info!(rollouts = n, "scored what this consumer held before it restarted");
                    }
                }
                Err(e) => tracing::error!(error = %e, "taking back this consumer's pending entries failed; retrying"),
            }
        }
        if let Err(e) = worker.round() {
            tracing::error!(error = %e, "scoring batch failed; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Scores from `raw` into `scored` with the judges `fetch` gets from the learner and serves
/// `Score` on `listener` until `shutdown` resolves. Health is NOT_SERVING until the first judges
/// are loaded and whenever Redis cannot be reached.
pub async fn run(
    config: ScorerServiceConfig,
    fetch: Arc<dyn FetchJudges>,
    raw: Arc<dyn Queue<ScoringRequest>>,
    scored: Arc<dyn Queue<ScoredRollout>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health, health_service) = rlhf_rpc::health();
    rlhf_rpc::metrics::scorer();
    rlhf_rpc::set_health::<RewardScorerServer<Service>>(&health, false).await;
    let current: Current = Arc::new(RwLock::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let security = config.security.clone();
    // Serving once the first judges are loaded, and while both streams are reachable. Asked a few
    // times a second, even while the worker waits out an outage, so it also keeps the link metrics.
    let ready: rlhf_rpc::Readiness = {
        let (current, raw, scored) = (current.clone(), raw.clone(), scored.clone());
        Arc::new(move || {
            let streams = rlhf_rpc::metrics::streams();
            let (r, s) = (raw.health(), scored.health());
            streams.observe_link("rollouts", r.reachable, r.outages, r.groups_recreated);
            streams.observe_link("scored", s.reachable, s.outages, s.groups_recreated);
            current.read().is_ok_and(|c| c.is_some()) && r.reachable && s.reachable
        })
    };
    let worker = {
        let (current, stop) = (current.clone(), stop.clone());
        std::thread::spawn(move || {
            let ready = || tracing::info!(consumer = %config.consumer, "judges loaded; scoring");
            work(fetch.as_ref(), &config, raw.as_ref(), scored.as_ref(), &stop, &current, &ready);
        })
    };
    let service = RewardScorerServer::new(Service(current))
        .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
    let names = [<RewardScorerServer<Service> as tonic::server::NamedService>::NAME];
    let routes = Routes::new(health_service).add_service(service);
    let options = security.options(ACCESS, Some(ready));
    let served = rlhf_rpc::serve_with(listener, routes, &names, health.clone(), options, shutdown).await;
    stop.store(true, Ordering::SeqCst);
    let worked = tokio::task::spawn_blocking(move || worker.join()).await;
    served?;
    match worked {
        Ok(Ok(())) => Ok(()),
        _ => Err("the scoring worker panicked".into()),
    }
}
