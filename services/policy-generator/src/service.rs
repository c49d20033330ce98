//! The generator replica as a gRPC service: `Generate`, `UpdateWeights`, `GetStatus`, plus
//! health (NOT_SERVING until the first weights arrive) and reflection.
//!
//! A replica starts without a model; the learner pushes the current version to it before it
//! sends work, so a replica that restarts picks up the current weights the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use rlhf_proto::v1::policy_generator_server::{PolicyGenerator as GeneratorRpc, PolicyGeneratorServer};
use rlhf_proto::v1::{GenerateResponse, GeneratorStatus, GeneratorStatusRequest, UpdateWeightsResponse, WeightChunk};
use rlhf_rpc::HealthReporter;
use rlhf_rpc::auth::Role;
use rlhf_rpc::trace::Hop;
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::{Error, GenerateRequest, PolicyGenerator};
use rlhf_proto::weights::Assembler;

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct GeneratorServiceConfig {
    /// Names the replica in rollouts, traces and status.
    pub id: String,
    /// Pause before each streamed rollout. Fault injection for tests: it widens the window in
    /// which a replica can be killed in the middle of a batch. Zero in production.
    pub stream_delay: std::time::Duration,
    /// What one request may ask for.
    pub limits: crate::Limits,
    /// Where the replica runs its model (`--device`); published weights are moved there.
    pub device: candle_core::Device,
    /// TLS and the role tokens: weights only from the learner, generation from the learner or an
    /// admin.
    pub security: rlhf_rpc::Security,
}

/// Who may call what on a replica ([`rlhf_rpc::auth::Access`]).
pub const ACCESS: &[(&str, &[Role])] = &[
    ("/rlhf.v1.PolicyGenerator/UpdateWeights", &[Role::Learner]),
    ("/rlhf.v1.PolicyGenerator/", &[Role::Learner, Role::Admin]),
];

/// Largest request a replica decodes: a weight chunk (1 MiB of tensor data) or a generation
/// request within the default limits, with room to spare; anything larger is refused unread.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

struct Replica {
    id: String,
    device: candle_core::Device,
    stream_delay: std::time::Duration,
    limits: crate::Limits,
    generator: RwLock<Option<Arc<PolicyGenerator>>>,
    in_flight: AtomicU32,
    /// One weight update at a time; a second waits rather than racing the first.
    updating: tokio::sync::Mutex<()>,
    health: HealthReporter,
}

/// Decrements the in-flight count however the request ends (even when the client hangs up
/// in the middle of the stream).
struct InFlight(Arc<Replica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn status(e: Error) -> Status {
    match e {
        Error::StaleVersion { .. } | Error::StaleEpoch { .. } => Status::failed_precondition(e.to_string()),
        Error::InvalidRequest(_) | Error::NonFinite(_) | Error::BadWeights(_) => {
            Status::invalid_argument(e.to_string())
        }
        Error::Generation(_) => Status::internal(e.to_string()),
        Error::Cancelled => Status::cancelled(e.to_string()),
    }
}

/// Cancels a generation when the call that asked for it goes away: tonic drops the call's
/// future when the client cancels or its `grpc-timeout` deadline passes.
struct CancelOnDrop(Option<Arc<std::sync::atomic::AtomicBool>>);

impl CancelOnDrop {
    /// The generation finished: nothing left to cancel.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Replica {
    fn current(&self) -> Option<Arc<PolicyGenerator>> {
        self.generator.read().ok().and_then(|g| g.clone())
    }
}

type RolloutStream = Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send>>;

struct Service(Arc<Replica>);

#[tonic::async_trait]
impl GeneratorRpc for Service {
    type GenerateStream = RolloutStream;

    async fn generate(
        &self,
        request: Request<rlhf_proto::v1::GenerateRequest>,
    ) -> Result<Response<RolloutStream>, Status> {
        let hop = Hop::from_metadata("generator.generate", request.metadata());
        let traceparent = hop.header();
        let span = hop.span;
        let request = request.into_inner();
        let generator = self.0.current().ok_or_else(|| Status::unavailable("no policy weights loaded yet"))?;
        if generator.version() < request.min_policy_version {
            return Err(Status::failed_precondition(format!(
                "serving version {} but the request needs {}",
                generator.version(),
                request.min_policy_version
            )));
        }
        let sampling = request.sampling.ok_or_else(|| Status::invalid_argument("sampling is required"))?.into();
        let domain = GenerateRequest {
            request_id: request.request_id.clone(),
            prompts: request.prompts.into_iter().map(Into::into).collect(),
            sampling,
            samples_per_prompt: request.samples_per_prompt as usize,
        };
        // Refused before any work: an oversize request must not take the replica down.
        generator.check(&domain, &self.0.limits).map_err(status)?;
        let busy = self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(self.0.clone());
        if busy as usize >= self.0.limits.max_concurrent {
            rlhf_rpc::metrics::generator().shed.inc();
            return Err(Status::resource_exhausted(format!(
                "{busy} generation requests in flight, the most this replica takes; try another"
            )));
        }
        let delay = self.0.stream_delay;
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cancel_on_drop = CancelOnDrop(Some(cancelled.clone()));
        let rollouts = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                tracing::debug!(request = %domain.request_id, prompts = domain.prompts.len(), "generating");
                let result = generator.generate_until(&domain, &|| cancelled.load(Ordering::SeqCst));
                if matches!(result, Err(Error::Cancelled)) {
                    rlhf_rpc::metrics::generator().cancelled.inc();
                    tracing::info!(request = %domain.request_id, "generation cancelled");
                }
                result
            })
        })
        .await
        .map_err(|e| Status::internal(format!("generation task: {e}")))?
        .map_err(status)?;
        cancel_on_drop.disarm();
        let generated = rlhf_rpc::metrics::generator();
        generated.rollouts.inc_by(rollouts.len() as u64);
        generated.tokens.inc_by(rollouts.iter().map(|r| r.response_tokens.len() as u64).sum());
        let request_id = request.request_id;
        let stream = async_stream(rollouts, request_id, delay, in_flight);
        // The rollouts' next hop (the scorer, via the learner's queue) hangs off this span.
        Ok(rlhf_rpc::trace::inject_response(Response::new(stream), &traceparent))
    }

    async fn update_weights(
        &self,
        request: Request<Streaming<WeightChunk>>,
    ) -> Result<Response<UpdateWeightsResponse>, Status> {
        let span = Hop::from_metadata("generator.update_weights", request.metadata()).span;
        let mut chunks = request.into_inner();
        let _one_at_a_time = self.0.updating.lock().await;
        let mut assembler = Assembler::default();
        while let Some(chunk) = chunks.next().await {
            assembler.push(chunk?).map_err(|e| status(e.into()))?;
        }
        let update = assembler.finish().map_err(|e| status(e.into()))?;
        let replica = self.0.clone();
        let serving = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let _entered = span.enter();
            if let Some(current) = replica.current() {
                if (update.epoch, update.version) == (current.epoch(), current.version()) {
                    return Ok(update.version);
                }
                current.update_weights_from(update.epoch, update.version, update.tensors)?;
                return Ok(current.version());
            }
            let config = update.config.ok_or_else(|| {
                Error::BadWeights("the first update of an empty replica needs model_config_json".into())
            })?;
            let generator = PolicyGenerator::new(
                &replica.device,
                &replica.id,
                config,
                update.pad_id,
                update.tensors,
                update.version,
            )?
            .with_epoch(update.epoch);
            *replica.generator.write().map_err(|_| Error::BadWeights("lock poisoned".into()))? =
                Some(Arc::new(generator));
            Ok(update.version)
        })
        .await
        .map_err(|e| Status::internal(format!("update task: {e}")))?
        .map_err(status)?;
        rlhf_rpc::set_health::<PolicyGeneratorServer<Service>>(&self.0.health, true).await;
        rlhf_rpc::metrics::generator().weight_version.set(serving as i64);
        tracing::info!(replica = %self.0.id, version = serving, "serving policy version");
        Ok(Response::new(UpdateWeightsResponse { serving_version: serving }))
    }

    async fn get_status(&self, _: Request<GeneratorStatusRequest>) -> Result<Response<GeneratorStatus>, Status> {
        let current = self.0.current();
        Ok(Response::new(GeneratorStatus {
            generator_id: self.0.id.clone(),
            serving_version: current.as_ref().map_or(0, |g| g.version()),
            in_flight_requests: self.0.in_flight.load(Ordering::SeqCst),
            ready: current.is_some(),
        }))
    }
}

/// Streams `rollouts`, holding the in-flight guard until the last one is sent.
fn async_stream(
    rollouts: Vec<rlhf_types::Rollout>,
    request_id: String,
    delay: std::time::Duration,
    in_flight: InFlight,
) -> RolloutStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        for rollout in rollouts {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let message = GenerateResponse { request_id: request_id.clone(), rollout: Some(rollout.into()) };
            if tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves one replica on `listener` until `shutdown` resolves.
pub async fn run(
    config: GeneratorServiceConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = rlhf_rpc::health();
    rlhf_rpc::metrics::generator();
    rlhf_rpc::set_health::<PolicyGeneratorServer<Service>>(&health, false).await;
    let replica = Arc::new(Replica {
        id: config.id,
        device: config.device,
        stream_delay: config.stream_delay,
        limits: config.limits,
        generator: RwLock::new(None),
        in_flight: AtomicU32::new(0),
        updating: tokio::sync::Mutex::new(()),
        health: health.clone(),
    });
    let service = PolicyGeneratorServer::new(Service(replica))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
    let names = [<PolicyGeneratorServer<Service> as tonic::server::NamedService>::NAME];
    let options = config.security.options(ACCESS, None);
    let routes = Routes::new(health_service).add_service(service);
    rlhf_rpc::serve_with(listener, routes, &names, health.clone(), options, shutdown).await
}
