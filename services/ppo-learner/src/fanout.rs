//! Spreading a step's generation requests over the generator replicas.
//!
//! - **Least-loaded first:** each request goes to the live replica with the fewest requests in
//!   flight, never past `in_flight_per_replica`.
//! - **Deadline:** a request (with the weight push that may precede it) that takes longer than
//!   `deadline` counts as failed.
//! - **Retry elsewhere:** a failed request goes back to the queue and the replica rests for
//!   `cooldown`; the retry keeps the request id and seed, so it yields the same rollout ids and
//!   the learner's deduplication makes a retry harmless. Partial results of a failed request are
//!   dropped, never delivered.
//! - **Current weights first:** a replica whose served version is not known to be the current
//!   one (new, restarted, failed) gets the current weights pushed before its next request.
//! - **Replicas come and go:** the list comes from a [`Resolver`] (a fixed list, or DNS behind a
//!   headless Service) asked again every `refresh_every`, also in the middle of a step. A new
//!   replica takes work at once (after its weights); one that disappears gets no new work, and
//!   what it had in flight either completes or fails and is retried elsewhere.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_proto::request_to_proto;
use rlhf_proto::v1::WeightChunk;
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_rpc::auth;
use rlhf_rpc::trace::{self, Hop};
use rlhf_types::{GenerateRequest, Rollout};
use tokio::task::JoinSet;
use tonic::Request;
use tonic::transport::Channel;

use crate::discovery::{Resolver, resolver_for};

/// Knobs of the fan-out.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub in_flight_per_replica: usize,
    pub deadline: Duration,
    /// Attempts per request before the step fails.
    pub max_attempts: u32,
    /// How long a replica that failed is left alone.
    pub cooldown: Duration,
    /// How often the resolver is asked again which replicas there are.
    pub refresh_every: Duration,
    /// The learner's bearer token, sent with every call (replicas take weights only from it).
    pub token: Option<String>,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            in_flight_per_replica: 1,
            deadline: Duration::from_secs(120),
            max_attempts: 6,
            cooldown: Duration::from_secs(1),
            refresh_every: Duration::from_secs(10),
            token: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("no generator replicas: none configured, or none found for longer than the request deadline")]
    NoReplicas,
    #[error("generator {url}: {message}")]
    Endpoint { url: String, message: String },
    #[error("request {request_id} failed {attempts} times; last error: {last}")]
    GaveUp { request_id: String, attempts: u32, last: String },
}

struct Replica {
    url: String,
    client: PolicyGeneratorClient<Channel>,
    /// The version it is known to serve; `None` after a failure or before the first push.
    serving: Option<u64>,
    in_flight: usize,
    down_until: Option<Instant>,
    requests: u64,
    failures: u64,
    /// Requests it turned away because it was full (RESOURCE_EXHAUSTED).
    shed: u64,
    /// No longer among the resolver's answers: it gets no new work and is dropped once idle.
    gone: bool,
}

/// What happened to one replica so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub url: String,
    pub serving: Option<u64>,
    pub requests: u64,
    pub failures: u64,
    /// Requests it turned away because it was full: not failures, its weights are still good.
    pub shed: u64,
}

/// Why a call to a replica did not deliver.
#[derive(Debug)]
enum CallError {
    /// The replica is full (RESOURCE_EXHAUSTED): alive, weights intact, busy with other work.
    Busy(String),
    /// Anything else: it may have died or lost its weights.
    Failed(String),
}

impl From<String> for CallError {
    fn from(why: String) -> Self {
        CallError::Failed(why)
    }
}

impl From<&str> for CallError {
    fn from(why: &str) -> Self {
        CallError::Failed(why.to_string())
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Busy(why) => write!(f, "replica full: {why}"),
            CallError::Failed(why) => f.write_str(why),
        }
    }
}

/// The learner's view of the generator replicas.
pub struct Fanout {
    resolver: Box<dyn Resolver>,
    /// Indices into this list stay valid while a step runs: replicas that disappear are only
    /// marked `gone`, and removed between steps.
    replicas: Vec<Replica>,
    config: FanoutConfig,
    resolved_at: Option<Instant>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("replicas", &self.report()).finish()
    }
}

/// Pushes one version and checks that the replica now serves it.
async fn push_weights(
    mut client: PolicyGeneratorClient<Channel>,
    chunks: Arc<Vec<WeightChunk>>,
    version: u64,
    traceparent: &str,
    token: Option<&str>,
) -> Result<(), String> {
    let stream = tokio_stream::iter(chunks.as_ref().clone());
    let request = auth::with_bearer(trace::inject(Request::new(stream), traceparent), token);
    let reply = client.update_weights(request).await.map_err(|s| s.to_string())?;
    match reply.into_inner().serving_version {
        serving if serving == version => Ok(()),
        serving => Err(format!("serves {serving} after a push of {version}")),
    }
}

async fn generate_on(
    mut client: PolicyGeneratorClient<Channel>,
    request: rlhf_proto::v1::GenerateRequest,
    traceparent: &str,
    token: Option<&str>,
) -> Result<(Vec<Rollout>, Option<String>), CallError> {
    let expected = request.prompts.len() * request.samples_per_prompt as usize;
    let request = auth::with_bearer(trace::inject(Request::new(request), traceparent), token);
    let response = client.generate(request).await.map_err(|s| match s.code() {
        tonic::Code::ResourceExhausted => CallError::Busy(s.message().to_string()),
        _ => CallError::Failed(s.to_string()),
    })?;
    // The generator's span, for the rollouts' next hop.
    let generator_span = trace::extract(response.metadata());
    let mut stream = response.into_inner();
    let mut rollouts = Vec::with_capacity(expected);
    while let Some(message) = stream.message().await.map_err(|s| s.to_string())? {
        let rollout = message.rollout.ok_or("a response without a rollout")?;
        rollouts.push(Rollout::try_from(rollout).map_err(|e| e.to_string())?);
    }
    if rollouts.len() != expected {
        return Err(format!("the stream ended after {} of {expected} rollouts", rollouts.len()).into());
    }
    Ok((rollouts, generator_span))
}

impl Fanout {
    /// Replicas as `--generators` names them: `http://host:port` URLs, or one
    /// `dns://host:port` (see [`resolver_for`]); connections are made on first use.
    pub fn new(generators: &[String], config: FanoutConfig) -> Result<Self, FanoutError> {
        Ok(Fanout::with_resolver(resolver_for(generators)?, config))
    }

    /// Replicas wherever `resolver` says they are, asked before the first request.
    pub fn with_resolver(resolver: Box<dyn Resolver>, config: FanoutConfig) -> Self {
        Fanout { resolver, replicas: vec![], config, resolved_at: None }
    }

    /// Asks the resolver again when `refresh_every` has passed (or never asked): adds replicas
    /// that appeared, marks those that disappeared. A failed lookup keeps the list as it is.
    async fn refresh_if_due(&mut self) {
        if self.resolved_at.is_some_and(|t| t.elapsed() < self.config.refresh_every) {
            return;
        }
        self.resolved_at = Some(Instant::now());
        let urls = match tokio::time::timeout(self.config.deadline, self.resolver.resolve()).await {
            Ok(Ok(urls)) => urls,
            Ok(Err(why)) => return tracing::warn!(error = %why, "could not resolve the generator replicas"),
            Err(_) => return tracing::warn!("resolving the generator replicas timed out"),
        };
        for r in &mut self.replicas {
            let listed = urls.contains(&r.url);
            if r.gone == listed {
                tracing::info!(replica = %r.url, listed, "generator replica {}", if listed { "is back" } else { "left" });
                r.gone = !listed;
            }
        }
        for url in urls {
            if self.replicas.iter().any(|r| r.url == url) {
                continue;
            }
            match rlhf_rpc::endpoint(&url) {
                Ok(channel) => {
                    tracing::info!(replica = %url, "generator replica joined");
                    self.replicas.push(Replica {
                        url,
                        client: PolicyGeneratorClient::new(channel)
                            .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES),
                        serving: None,
                        in_flight: 0,
                        down_until: None,
                        requests: 0,
                        failures: 0,
                        shed: 0,
                        gone: false,
                    });
                }
                Err(e) => tracing::warn!(replica = %url, error = %e, "unusable generator address"),
            }
        }
    }

    /// Drops replicas that left and have nothing in flight; only between steps, when no
    /// running request holds an index into the list.
    fn sweep(&mut self) {
        self.replicas.retain(|r| !r.gone || r.in_flight > 0);
    }

    pub fn report(&self) -> Vec<ReplicaReport> {
        self.replicas
            .iter()
            .filter(|r| !r.gone)
            .map(|r| ReplicaReport {
                url: r.url.clone(),
                serving: r.serving,
                requests: r.requests,
                failures: r.failures,
                shed: r.shed,
            })
            .collect()
    }

    /// A full replica: rested for the cooldown so the request goes elsewhere first, but still
    /// known to serve its version (no weight push on its next request).
    fn mark_busy(&mut self, replica: usize, why: &str) {
        let r = &mut self.replicas[replica];
        r.shed += 1;
        r.down_until = Some(Instant::now() + self.config.cooldown);
        tracing::info!(replica = %r.url, reason = %why, "generator replica full; trying elsewhere");
    }

    fn mark_failed(&mut self, replica: usize, why: &str) {
        let r = &mut self.replicas[replica];
        r.serving = None;
        r.failures += 1;
        r.down_until = Some(Instant::now() + self.config.cooldown);
        tracing::warn!(replica = %r.url, error = %why, "generator replica failed; resting it");
    }

    /// The live replica with the fewest requests in flight and room for one more.
    fn pick(&self, now: Instant) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !r.gone && r.down_until.is_none_or(|t| t <= now) && r.in_flight < self.config.in_flight_per_replica
            })
            .min_by_key(|(_, r)| r.in_flight)
            .map(|(i, _)| i)
    }

    /// Pushes `version` to every replica that is not resting; returns how many now serve it.
    pub async fn publish(&mut self, version: u64, chunks: Arc<Vec<WeightChunk>>) -> usize {
        self.refresh_if_due().await;
        self.sweep();
        let hop = Hop::start("learner.publish_weights", None);
        let now = Instant::now();
        let mut pushes = JoinSet::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if r.gone || r.down_until.is_some_and(|t| t > now) || r.serving == Some(version) {
                continue;
            }
            let (client, chunks, traceparent) = (r.client.clone(), chunks.clone(), hop.header());
            let (deadline, token) = (self.config.deadline, self.config.token.clone());
            pushes.spawn(async move {
                let push = push_weights(client, chunks, version, &traceparent, token.as_deref());
                let result = tokio::time::timeout(deadline, push).await;
                (i, result)
            });
        }
        while let Some(joined) = pushes.join_next().await {
            let Ok((i, result)) = joined else { continue };
            match result {
                Ok(Ok(())) => self.replicas[i].serving = Some(version),
                Ok(Err(why)) => self.mark_failed(i, &why),
                Err(_) => self.mark_failed(i, "weight push passed its deadline"),
            }
        }
        self.replicas.iter().filter(|r| !r.gone && r.serving == Some(version)).count()
    }

    /// Runs every request on some replica serving `version` (pushing `chunks` first where
    /// needed) and hands each request's complete rollouts, with the `traceparent` of the span
    /// that produced them (the generator's, else the learner's request span), to `deliver` as
    /// soon as they arrive.
    pub async fn generate(
        &mut self,
        requests: &[GenerateRequest],
        version: u64,
        chunks: Arc<Vec<WeightChunk>>,
        mut deliver: impl FnMut(&GenerateRequest, Vec<Rollout>, &str),
    ) -> Result<(), FanoutError> {
        // (request index, failed attempts so far)
        let mut waiting: VecDeque<(usize, u32)> = (0..requests.len()).map(|i| (i, 0)).collect();
        let mut running = JoinSet::new();
        // One trace per request: its rollouts' journey through generator and scorer hangs off it.
        let hops: Vec<Hop> = requests.iter().map(|_| Hop::start("learner.generate_request", None)).collect();
        self.refresh_if_due().await;
        self.sweep();
        // Since when no replica at all is listed while work waits.
        let mut empty_since: Option<Instant> = None;
        loop {
            self.refresh_if_due().await;
            let now = Instant::now();
            while !waiting.is_empty() {
                let Some(r) = self.pick(now) else { break };
                let (index, attempts) = waiting.pop_front().expect("not empty");
                let replica = &mut self.replicas[r];
                replica.in_flight += 1;
                replica.requests += 1;
                let needs_weights = replica.serving != Some(version);
                let client = replica.client.clone();
                let (chunks, traceparent, deadline) = (chunks.clone(), hops[index].header(), self.config.deadline);
                let token = self.config.token.clone();
                let wire = request_to_proto(&requests[index], version);
                running.spawn(async move {
                    let work = async {
                        if needs_weights {
                            push_weights(client.clone(), chunks, version, &traceparent, token.as_deref()).await?;
                        }
                        generate_on(client, wire, &traceparent, token.as_deref()).await
                    };
                    let result = match tokio::time::timeout(deadline, work).await {
                        Ok(result) => result,
                        Err(_) => Err(CallError::Failed(format!("no complete answer within {deadline:?}"))),
                    };
                    (r, index, attempts, result)
                });
            }
            if running.is_empty() {
                if waiting.is_empty() {
                    return Ok(());
                }
                if self.replicas.iter().all(|r| r.gone) {
                    let since = *empty_since.get_or_insert(now);
                    if since.elapsed() > self.config.deadline {
                        return Err(FanoutError::NoReplicas);
                    }
                } else {
                    empty_since = None;
                }
                // Every replica rests (or none is listed): wait for the first to come back, or
                // for the next look at who is there.
                let refresh = self.resolved_at.map_or(now, |t| t + self.config.refresh_every);
                let next =
                    self.replicas.iter().filter(|r| !r.gone).filter_map(|r| r.down_until).min().unwrap_or(refresh);
                tokio::time::sleep_until(tokio::time::Instant::from_std(next.min(refresh).max(now))).await;
                continue;
            }
            // Wait for a request to end, or for the next look at who is there: a replica that
            // joins mid-step takes work while the others are still busy.
            let refresh = self.resolved_at.map_or(now, |t| t + self.config.refresh_every);
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(refresh.max(now))) => continue,
            };
            let Some(joined) = joined else { continue };
            let (r, index, attempts, result) = joined.map_err(|e| FanoutError::GaveUp {
                request_id: "?".into(),
                attempts: 0,
                last: format!("request task failed: {e}"),
            })?;
            self.replicas[r].in_flight -= 1;
            match result {
                Ok((rollouts, generator_span)) => {
                    self.replicas[r].serving = Some(version);
                    let parent = generator_span.unwrap_or_else(|| hops[index].header());
                    deliver(&requests[index], rollouts, &parent);
                }
                Err(error) => {
                    let why = error.to_string();
                    match error {
                        CallError::Busy(_) => self.mark_busy(r, &why),
                        CallError::Failed(_) => self.mark_failed(r, &why),
                    }
                    let attempts = attempts + 1;
                    if attempts >= self.config.max_attempts {
                        return Err(FanoutError::GaveUp {
                            request_id: requests[index].request_id.clone(),
                            attempts,
                            last: why,
                        });
                    }
                    waiting.push_back((index, attempts));
                }
            }
        }
    }
}
