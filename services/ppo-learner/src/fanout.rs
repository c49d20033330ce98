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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_proto::request_to_proto;
use rlhf_proto::v1::WeightChunk;
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_rpc::trace::{self, Hop};
use rlhf_types::{GenerateRequest, Rollout};
use tokio::task::JoinSet;
use tonic::Request;
use tonic::transport::Channel;

/// Knobs of the fan-out.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub in_flight_per_replica: usize,
    pub deadline: Duration,
    /// Attempts per request before the step fails.
    pub max_attempts: u32,
    /// How long a replica that failed is left alone.
    pub cooldown: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            in_flight_per_replica: 1,
            deadline: Duration::from_secs(120),
            max_attempts: 6,
            cooldown: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("no generator replicas configured")]
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
}

/// What happened to one replica so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub url: String,
    pub serving: Option<u64>,
    pub requests: u64,
    pub failures: u64,
}

/// The learner's view of the generator replicas.
pub struct Fanout {
    replicas: Vec<Replica>,
    config: FanoutConfig,
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
) -> Result<(), String> {
    let stream = tokio_stream::iter(chunks.as_ref().clone());
    let reply =
        client.update_weights(trace::inject(Request::new(stream), traceparent)).await.map_err(|s| s.to_string())?;
    match reply.into_inner().serving_version {
        serving if serving == version => Ok(()),
        serving => Err(format!("serves {serving} after a push of {version}")),
    }
}

async fn generate_on(
    mut client: PolicyGeneratorClient<Channel>,
    request: rlhf_proto::v1::GenerateRequest,
    traceparent: &str,
) -> Result<(Vec<Rollout>, Option<String>), String> {
    let expected = request.prompts.len() * request.samples_per_prompt as usize;
    let response =
        client.generate(trace::inject(Request::new(request), traceparent)).await.map_err(|s| s.to_string())?;
    // The generator's span, for the rollouts' next hop.
    let generator_span = trace::extract(response.metadata());
    let mut stream = response.into_inner();
    let mut rollouts = Vec::with_capacity(expected);
    while let Some(message) = stream.message().await.map_err(|s| s.to_string())? {
        let rollout = message.rollout.ok_or("a response without a rollout")?;
        rollouts.push(Rollout::try_from(rollout).map_err(|e| e.to_string())?);
    }
    if rollouts.len() != expected {
        return Err(format!("the stream ended after {} of {expected} rollouts", rollouts.len()));
    }
    Ok((rollouts, generator_span))
}

impl Fanout {
    /// Replicas at `urls` (`http://host:port`); connections are made on first use.
    pub fn new(urls: &[String], config: FanoutConfig) -> Result<Self, FanoutError> {
        if urls.is_empty() {
            return Err(FanoutError::NoReplicas);
        }
        let replicas = urls
            .iter()
            .map(|url| {
                let channel = rlhf_rpc::endpoint(url)
                    .map_err(|e| FanoutError::Endpoint { url: url.clone(), message: e.to_string() })?;
                Ok(Replica {
                    url: url.clone(),
                    client: PolicyGeneratorClient::new(channel)
                        .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES),
                    serving: None,
                    in_flight: 0,
                    down_until: None,
                    requests: 0,
                    failures: 0,
                })
            })
            .collect::<Result<Vec<_>, FanoutError>>()?;
        Ok(Fanout { replicas, config })
    }

    pub fn report(&self) -> Vec<ReplicaReport> {
        self.replicas
            .iter()
            .map(|r| ReplicaReport {
                url: r.url.clone(),
                serving: r.serving,
                requests: r.requests,
                failures: r.failures,
            })
            .collect()
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
            .filter(|(_, r)| r.down_until.is_none_or(|t| t <= now) && r.in_flight < self.config.in_flight_per_replica)
            .min_by_key(|(_, r)| r.in_flight)
            .map(|(i, _)| i)
    }

    /// Pushes `version` to every replica that is not resting; returns how many now serve it.
    pub async fn publish(&mut self, version: u64, chunks: Arc<Vec<WeightChunk>>) -> usize {
        let hop = Hop::start("learner.publish_weights", None);
        let now = Instant::now();
        let mut pushes = JoinSet::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if r.down_until.is_some_and(|t| t > now) || r.serving == Some(version) {
                continue;
            }
            let (client, chunks, traceparent) = (r.client.clone(), chunks.clone(), hop.header());
            let deadline = self.config.deadline;
            pushes.spawn(async move {
                let result = tokio::time::timeout(deadline, push_weights(client, chunks, version, &traceparent)).await;
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
        self.replicas.iter().filter(|r| r.serving == Some(version)).count()
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
        loop {
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
                let wire = request_to_proto(&requests[index], version);
                running.spawn(async move {
                    let work = async {
                        if needs_weights {
                            push_weights(client.clone(), chunks, version, &traceparent).await?;
                        }
                        generate_on(client, wire, &traceparent).await
                    };
                    let result = match tokio::time::timeout(deadline, work).await {
                        Ok(result) => result,
                        Err(_) => Err(format!("no complete answer within {deadline:?}")),
                    };
                    (r, index, attempts, result)
                });
            }
            if running.is_empty() {
                if waiting.is_empty() {
                    return Ok(());
                }
                // Every replica rests: wait for the first to come back.
                let next = self.replicas.iter().filter_map(|r| r.down_until).min().unwrap_or(now);
                tokio::time::sleep_until(tokio::time::Instant::from_std(next.max(now))).await;
                continue;
            }
            let Some(joined) = running.join_next().await else { continue };
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
                Err(why) => {
                    self.mark_failed(r, &why);
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
