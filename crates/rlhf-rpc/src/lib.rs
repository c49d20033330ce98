//! What every rlhf gRPC service shares.
//!
//! # Layout
//! - [`serve`]: runs a service's routes with server reflection on a listener until shutdown;
//!   [`serve_with`] adds a [`Readiness`] that health follows until the drain, TLS ([`tls`]) and
//!   access control ([`auth`]).
//! - [`health`]: the grpc.health.v1 reporter a service flips to SERVING once its model loaded.
//! - [`trace`]: W3C trace context in gRPC metadata and queue entries; [`telemetry`]: the
//!   subscriber, with OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`auth`]: bearer tokens, compared in constant time.
//! - [`endpoint`]: client channels with connect timeouts.
//! - [`metrics`]: every Prometheus metric rlhf exports, the `/metrics` endpoint, and the
//!   latency of every gRPC request (a layer [`serve`] puts in front of each service).

pub mod auth;
pub mod drain;
pub mod metrics;
pub mod telemetry;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;

/// Largest message a service accepts or sends: a score request of a full PPO batch fits.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A health reporter (every service starts NOT_SERVING) and the health service to route.
pub fn health()
-> (HealthReporter, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
    tonic_health::server::health_reporter()
}

/// Marks service `S` and the server as a whole (the empty service name, what a probe without a
/// service asks for) as serving or not: a service is only ready once its model is.
pub async fn set_health<S: tonic::server::NamedService>(reporter: &HealthReporter, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    reporter.set_service_status(S::NAME, status).await;
    reporter.set_service_status("", status).await;
}

/// Serves `routes` (the services named `services`, plus health) and server reflection, v1 and
/// v1alpha (grpcurl and older clients ask the latter), on `listener`. Reflection lists only what
/// this process serves.
///
/// When `shutdown` resolves (SIGTERM), the services report NOT_SERVING on `health` at once, new
/// calls are refused with UNAVAILABLE, and the calls in flight get at most [`drain::grace`] to
/// finish; then the server stops, cancelling what is left.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&str],
    health: HealthReporter,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, routes, services, health, ServeOptions::default(), shutdown).await
}

/// Whether a service can do its work now (its model loaded, Redis reachable): asked a few times
/// a second, so it must not block.
pub type Readiness = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a [`Readiness`] is asked.
const READINESS_POLL: Duration = Duration::from_millis(250);

/// A server's TLS and the tokens of the roles that may call it: what a process is configured
/// with, handed to each service, which adds its own table of who may call what.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    pub tokens: auth::RoleTokens,
}

impl Security {
    /// The options to serve with: this security, `rules` for access, and `ready` for health.
    pub fn options(&self, rules: &[(&'static str, &'static [auth::Role])], ready: Option<Readiness>) -> ServeOptions {
        ServeOptions { ready, tls: self.tls.clone(), access: Some(auth::Access::new(self.tokens.clone(), rules)) }
    }
}

/// What a server adds to [`serve`]'s defaults.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Health follows it until the drain begins: a scorer that cannot reach Redis reports
    /// NOT_SERVING, and SERVING again once it can. Once the shutdown begins it is no longer
    /// asked, so nothing turns a draining service back to SERVING.
    pub ready: Option<Readiness>,
    /// TLS (mutual when it names a client CA), from [`tls::server_config`].
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Who may call which method, checked before a request is decoded.
    pub access: Option<auth::Access>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("ready", &self.ready.is_some())
            .field("tls", &self.tls.is_some())
            .field("access", &self.access)
            .finish()
    }
}

/// [`serve`] with `options`: readiness, TLS, access control.
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    services: &[&str],
    health: HealthReporter,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let ServeOptions { ready, tls, access } = options;
    let reflection = || {
        let served = services.iter().copied().chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rlhf_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in served {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let v1alpha = reflection().build_v1alpha().expect("the bundled descriptor sets are valid");
    let v1 = reflection().build_v1().expect("the bundled descriptor sets are valid");
    let drain = std::sync::Arc::new(drain::Drain::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .layer(metrics::GrpcTiming)
        .layer(auth::Authorize(access.map(std::sync::Arc::new)))
        .layer(drain::Admission(drain.clone()))
        .add_routes(routes.add_service(v1).add_service(v1alpha));
    let stopped = async {
        let _ = stopped.await;
    };
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(config) => Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, config), stopped)),
        None => Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)),
    };
    let names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    let follow = {
        let (health, names) = (health.clone(), names.clone());
        async move {
            let Some(ready) = ready else { return std::future::pending::<()>().await };
            let mut reported = None;
            loop {
                let now = ready();
                if reported != Some(now) {
                    let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
                    for name in names.iter().map(String::as_str).chain([""]) {
                        health.set_service_status(name, status).await;
                    }
                    reported = Some(now);
                }
                tokio::time::sleep(READINESS_POLL).await;
            }
        }
    };
    let drain_then_stop = async move {
        // Health follows readiness until the shutdown; the drain's NOT_SERVING comes after, so
        // the two never race.
        tokio::select! {
            _ = shutdown => {}
            _ = follow => {}
        }
        let deadline = tokio::time::Instant::now() + drain::grace();
        for name in names.iter().map(String::as_str).chain([""]) {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        drain.start();
        tracing::info!(in_flight = drain.in_flight(), grace = ?drain::grace(), "draining: NOT_SERVING, new calls refused");
        while drain.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Streams still being sent finish within what is left of the grace.
        let _ = stop.send(());
        tokio::time::sleep_until(deadline).await;
        drain.in_flight()
    };
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        left = drain_then_stop => {
            tracing::warn!(in_flight = left, "the drain grace passed; cancelling what is left");
            Ok(())
        }
    }
}

/// A lazily connecting channel to `url` (`http://host:port`, or `https://` with the process's
/// client TLS, [`tls::set_client`]), with a connect timeout so a dead peer fails fast instead of
/// hanging a request.
pub fn endpoint(url: &str) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint =
        Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint.tls_config(tls::client().unwrap_or_default())?;
    }
    Ok(endpoint.connect_lazy())
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends), so a service drains and exits.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// service calls it before it binds its port, so a SIGTERM that comes as soon as the port is
/// open (a fast rollout, a test under load) is a shutdown, not the default action that kills
/// the process (measured: a scorer killed by signal 15 under load).
/// Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (term, interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
