//! Prometheus metrics: every name rlhf exports, in one place, and the `/metrics` endpoint each
//! service serves beside its gRPC port.
//!
//! Names follow Prometheus practice: an `rlhf_` prefix, base units (seconds), counters ending
//! in `_total`, and no label whose values grow with the work (no rollout or request ids).
//! Each service touches its own group (`generator()`, `scorer()`, `learner()`,
//! `preferences()`) when it starts, so a scrape shows its metrics from the first second and
//! nothing of the other services'.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, TextEncoder,
};

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric");
    prometheus::register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric");
    prometheus::register(Box::new(g.clone())).expect("each metric is registered once");
    g
}

fn float_gauge(name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("a valid metric");
    prometheus::register(Box::new(g.clone())).expect("each metric is registered once");
    g
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("a valid metric");
    prometheus::register(Box::new(h.clone())).expect("each metric is registered once");
    h
}

/// Streams' lengths, as the scorer and the learner see them.
#[derive(Debug)]
pub struct StreamMetrics {
    pub length: IntGaugeVec,
    pub pending: IntGaugeVec,
    pub dead_letters: IntGaugeVec,
    /// 1 while this process reaches Redis for the stream, 0 while it waits out an outage.
    pub reachable: IntGaugeVec,
    pub outages: IntCounterVec,
    /// Consumer groups created again because Redis came back without its data.
    pub data_losses: IntCounterVec,
}

impl StreamMetrics {
    fn new() -> Self {
        let vec = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["stream"]).expect("a valid metric");
            prometheus::register(Box::new(g.clone())).expect("each metric is registered once");
            g
        };
        let counters = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["stream"]).expect("a valid metric");
            prometheus::register(Box::new(c.clone())).expect("each metric is registered once");
            c
        };
        StreamMetrics {
            reachable: vec("rlhf_redis_reachable", "1 while Redis answers for this stream, 0 during an outage."),
            outages: counters("rlhf_redis_outages_total", "Redis outages this process waited out (or is waiting out)."),
            data_losses: counters(
                "rlhf_redis_data_losses_total",
                "Consumer groups created again because Redis came back without its data.",
            ),
            length: vec("rlhf_stream_length", "Entries stored in a Redis stream (delivered or not)."),
            pending: vec("rlhf_stream_pending_entries", "Entries delivered to a consumer and not yet acknowledged."),
            dead_letters: vec("rlhf_stream_dead_letter_entries", "Entries moved to a stream's dead-letter list."),
        }
    }

    /// Records the link to Redis of one stream: reachable now, and the process's totals so far.
    pub fn observe_link(&self, stream: &str, reachable: bool, outages: u64, data_losses: u64) {
        self.reachable.with_label_values(&[stream]).set(i64::from(reachable));
        for (counter, total) in [(&self.outages, outages), (&self.data_losses, data_losses)] {
            let counter = counter.with_label_values(&[stream]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Records one stream's figures (`None` where the queue could not say).
    pub fn observe(&self, stream: &str, length: Option<u64>, pending: Option<u64>, dead: Option<u64>) {
        for (gauge, value) in [(&self.length, length), (&self.pending, pending), (&self.dead_letters, dead)] {
            if let Some(v) = value {
                gauge.with_label_values(&[stream]).set(v as i64);
            }
        }
    }
}

static STREAMS: LazyLock<StreamMetrics> = LazyLock::new(StreamMetrics::new);

pub fn streams() -> &'static StreamMetrics {
    &STREAMS
}

/// A generator replica's figures.
#[derive(Debug)]
pub struct GeneratorMetrics {
    pub cancelled: IntCounter,
    pub shed: IntCounter,
    pub rollouts: IntCounter,
    pub tokens: IntCounter,
    pub weight_version: IntGauge,
}

static GENERATOR: LazyLock<GeneratorMetrics> = LazyLock::new(|| GeneratorMetrics {
    shed: counter(
        "rlhf_generation_requests_shed_total",
        "Generation requests refused with RESOURCE_EXHAUSTED because the replica was full.",
    ),
    cancelled: counter(
        "rlhf_generations_cancelled_total",
        "Generations stopped because their client cancelled or their deadline passed.",
    ),
    rollouts: counter("rlhf_rollouts_generated_total", "Rollouts this replica sampled."),
    tokens: counter("rlhf_tokens_generated_total", "Response tokens this replica sampled."),
    weight_version: gauge("rlhf_weight_version", "The policy version this replica serves (0 before the first)."),
});

pub fn generator() -> &'static GeneratorMetrics {
    &GENERATOR
}

/// A scorer's figures.
#[derive(Debug)]
pub struct ScorerMetrics {
    pub rollouts: IntCounter,
    pub dropped: IntCounter,
    pub judges_version: IntGauge,
}

static SCORER: LazyLock<ScorerMetrics> = LazyLock::new(|| ScorerMetrics {
    rollouts: counter("rlhf_rollouts_scored_total", "Rollouts scored and published to the scored stream."),
    dropped: counter(
        "rlhf_rollouts_unknown_judges_total",
        "Rollouts dropped because the learner no longer knows the judges version they ask for.",
    ),
    judges_version: gauge("rlhf_judges_version", "The judges version this scorer holds (0 before the first)."),
});

pub fn scorer() -> &'static ScorerMetrics {
    &SCORER
}

/// The learner's figures.
#[derive(Debug)]
pub struct LearnerMetrics {
    pub rollouts: IntCounter,
    pub deduplicated: IntCounter,
    pub step_seconds: Histogram,
    pub policy_version: IntGauge,
    pub reward: Gauge,
    pub kl: Gauge,
    pub alarm: IntGauge,
    pub replica_weight_version: GaugeVec,
}

static LEARNER: LazyLock<LearnerMetrics> = LazyLock::new(|| LearnerMetrics {
    rollouts: counter("rlhf_rollouts_trained_total", "Rollouts the learner trained on."),
    deduplicated: counter(
        "rlhf_rollouts_deduplicated_total",
        "Rollouts the learner dropped as duplicates of one it already had (a retried request).",
    ),
    step_seconds: histogram(
        "rlhf_ppo_step_duration_seconds",
        "Wall time of one PPO step: rollouts, scoring, update, weight push.",
        vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
    ),
    policy_version: gauge("rlhf_policy_version", "The policy version the learner last published."),
    reward: float_gauge("rlhf_ppo_reward", "Mean normalised reward-model score of the last step's rollouts."),
    kl: float_gauge("rlhf_ppo_kl", "Mean sequence KL to the reference policy of the last step's rollouts, in nats."),
    alarm: gauge("rlhf_reward_hacking_alarm", "1 once the reward-hacking monitor has raised an alarm in this run."),
    replica_weight_version: {
        let g = GaugeVec::new(
            Opts::new("rlhf_replica_weight_version", "The policy version each generator replica is known to serve."),
            &["replica"],
        )
        .expect("a valid metric");
        prometheus::register(Box::new(g.clone())).expect("each metric is registered once");
        g
    },
});

pub fn learner() -> &'static LearnerMetrics {
    &LEARNER
}

/// The preference store's figures.
#[derive(Debug)]
pub struct PreferenceMetrics {
    pub rankings: IntCounter,
    pub refused: IntCounter,
}

static PREFERENCES: LazyLock<PreferenceMetrics> = LazyLock::new(|| PreferenceMetrics {
    rankings: counter("rlhf_preference_rankings_stored_total", "Rankings stored since this process started."),
    refused: counter(
        "rlhf_preference_rankings_refused_total",
        "Rankings refused (invalid, unknown prompt, duplicate).",
    ),
});

pub fn preferences() -> &'static PreferenceMetrics {
    &PREFERENCES
}

static GRPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "rlhf_grpc_request_duration_seconds",
            "Time from a gRPC request's arrival to its response headers (for streams: to the first message).",
        )
        .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0]),
        &["service", "method"],
    )
    .expect("a valid metric");
    prometheus::register(Box::new(h.clone())).expect("each metric is registered once");
    h
});

static REFUSED_CALLS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "rlhf_grpc_calls_refused_total",
        "gRPC calls refused before decoding: no token, a wrong one, or a role not allowed.",
    )
});

/// Calls the access check refused (every server).
pub fn refused_calls() -> &'static IntCounter {
    &REFUSED_CALLS
}

/// Everything registered so far, in the Prometheus text format.
pub fn render() -> String {
    let mut out = vec![];
    TextEncoder::new().encode(&prometheus::gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    LazyLock::force(&GRPC_SECONDS);
    LazyLock::force(&REFUSED_CALLS);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], render()) }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Times every gRPC request by service and method (the path `/package.Service/Method`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTiming;

impl<S> tower::Layer<S> for GrpcTiming {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed(inner)
    }
}

/// [`GrpcTiming`] around a service.
#[derive(Debug, Clone)]
pub struct Timed<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let started = Instant::now();
        let response = self.0.call(request);
        Box::pin(async move {
            let result = response.await;
            GRPC_SECONDS.with_label_values(&[&service, &method]).observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// `/rlhf.v1.PolicyGenerator/Generate` ↦ (`rlhf.v1.PolicyGenerator`, `Generate`); anything else
/// (a path no service has) ↦ one `other` series, so a client cannot make labels up.
fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method))
            if service.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                && method.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && (service.starts_with("rlhf.") || service.starts_with("grpc.")) =>
        {
            (service.to_string(), method.to_string())
        }
        _ => ("other".into(), "other".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rlhf_…` name in `text`.
    fn names_in(text: &str) -> Vec<String> {
        text.match_indices("rlhf_")
            .map(|(i, _)| text[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect())
            .collect()
    }

    #[test]
    fn the_grafana_dashboard_names_only_metrics_that_exist() {
        let (_, _, _, _) = (generator(), scorer(), learner(), preferences());
        // Labelled families appear once they have a series.
        streams().observe("rollouts", Some(0), Some(0), Some(0));
        learner().replica_weight_version.with_label_values(&["http://x:1"]).set(0.0);
        GRPC_SECONDS.with_label_values(&["rlhf.v1.X", "Y"]).observe(0.0);
        let families: std::collections::HashSet<String> =
            prometheus::gather().iter().map(|f| f.name().to_string()).collect();
        let dashboard = include_str!("../../../deploy/grafana/rlhf.json");
        let names = names_in(dashboard);
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            let family = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            assert!(families.contains(family), "the dashboard asks for {name}, which no service exports");
        }
    }

    #[test]
    fn paths_become_bounded_labels() {
        assert_eq!(
            split_path("/rlhf.v1.PolicyGenerator/Generate"),
            ("rlhf.v1.PolicyGenerator".into(), "Generate".into())
        );
        assert_eq!(split_path("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health".into(), "Check".into()));
        for junk in ["/", "/x", "/evil.Service/<script>", "/made.up/Method"] {
            assert_eq!(split_path(junk), ("other".into(), "other".into()), "{junk}");
        }
    }
}
