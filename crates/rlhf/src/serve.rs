//! `rlhf serve generator|scorer|preferences|learner`: each service as its own process, the way
//! it runs on Kubernetes. Every one answers grpc.health.v1 and server reflection, logs to
//! stderr (`RUST_LOG` filters) and drains on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rlhf_pipeline::RunDir;
use rlhf_queue::{Queue, RedisQueue, RedisQueueOptions};
use rlhf_rpc::auth::Role;
use rlhf_types::{ScoredRollout, ScoringRequest};

#[derive(Debug, Subcommand)]
pub enum Service {
    /// A policy generator replica. It starts without a model (health NOT_SERVING) and serves
    /// whatever version the learner pushes to it. Run several, each on its own port; replicas
    /// sharing a machine decode fastest with RAYON_NUM_THREADS set to their share of its cores.
    Generator(GeneratorArgs),
    /// The reward scorer: gets the reward model and reference policy from the learner (--learner)
    /// once it announces them, moves rollouts from the raw stream to the scored stream, and
    /// answers `Score` calls. It needs no files.
    Scorer(ScorerArgs),
    /// The preference store over a SQLite file. Every call, reads included, needs the bearer
    /// token of a role allowed to make it when tokens are set: annotators (RLHF_ANNOTATOR_TOKEN)
    /// list prompts and submit rankings; the learner (RLHF_LEARNER_TOKEN) and admins
    /// (RLHF_ADMIN_TOKEN) may call anything.
    Preferences(PreferencesArgs),
    /// The PPO learner: runs the unfinished stages of --run-dir, with PPO's rollouts coming from
    /// the generator replicas through Redis and the scorer, then writes the report and exits.
    Learner(LearnerArgs),
}

#[derive(Debug, Args)]
pub struct Listen {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. 0.0.0.0:9464; none if unset.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds the calls in flight get to finish after SIGTERM (health turns NOT_SERVING and new
    /// calls are refused at once); keep it below Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
    /// Check the arguments (and the learner's --config and --generators) and exit without
    /// serving: what the Kubernetes manifests are tested with, so flags and manifests cannot
    /// drift apart.
    #[arg(long)]
    check_args: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS for this process's server and the clients it dials (`https://` URLs). Role tokens come
/// from the environment: RLHF_LEARNER_TOKEN, RLHF_SCORER_TOKEN, RLHF_ANNOTATOR_TOKEN,
/// RLHF_ADMIN_TOKEN; a server checks the tokens of the roles allowed to call each method, a
/// client sends its own role's.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// This process's certificate chain (PEM): served to clients, and presented to servers that
    /// demand one. Read again when the file changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs the cluster's certificates: servers this process calls must
    /// present one it signed; with --mtls, so must clients that call this process.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by --tls-ca.
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    mtls: bool,
}

impl TlsArgs {
    /// This process's server security (and, as a side effect, the client TLS of its `https://`
    /// calls), with the role tokens from the environment.
    fn security(&self) -> Result<rlhf_rpc::Security> {
        if let Some(ca) = &self.tls_ca {
            let identity = self.tls_cert.clone().zip(self.tls_key.clone());
            rlhf_rpc::tls::set_client(&rlhf_rpc::tls::ClientTls { ca: ca.clone(), identity })?;
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(rlhf_rpc::tls::server_config(&rlhf_rpc::tls::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.mtls.then(|| self.tls_ca.clone()).flatten(),
            })?),
            _ => None,
        };
        Ok(rlhf_rpc::Security { tls, tokens: rlhf_rpc::auth::RoleTokens::from_env() })
    }
}

/// The first of `roles` whose token is set in the environment: what this process's client sends.
pub fn client_token(roles: &[rlhf_rpc::auth::Role]) -> Option<String> {
    let tokens = rlhf_rpc::auth::RoleTokens::from_env();
    roles.iter().find_map(|r| tokens.get(*r).map(str::to_string))
}

#[derive(Debug, Args)]
pub struct Streams {
    /// Redis holding the rollout streams: redis://[USER:PASSWORD@]HOST:PORT/, or rediss:// for
    /// TLS (with --tls-ca).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// Prefix of the stream names (`<prefix>:rollouts`, `<prefix>:scored`), so that runs can
    /// share one Redis.
    #[arg(long, default_value = "rlhf")]
    streams: String,
    /// How long Redis may be unreachable (a restart, a rescheduled pod) before the service gives
    /// up: every command is retried with jittered backoff until then, and health says
    /// NOT_SERVING meanwhile.
    #[arg(long, default_value_t = rlhf_queue::DEFAULT_OUTAGE_BUDGET.as_secs())]
    redis_outage_secs: u64,
}

/// The raw and the scored rollout streams.
type StreamPair = (Arc<dyn Queue<ScoringRequest>>, Arc<dyn Queue<ScoredRollout>>);

impl Streams {
    /// Connects to both streams. A Redis that is not up yet is waited for (services start in any
    /// order) for as long as an outage would be. A `rediss://` URL is dialled with TLS: Redis's
    /// certificate must be signed by --tls-ca, and --tls-cert is presented when Redis asks.
    fn open(&self, tls: &TlsArgs) -> Result<StreamPair> {
        let redis_tls = match (self.redis.starts_with("rediss://"), &tls.tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => {
                Some(rlhf_queue::RedisTls { ca: ca.clone(), identity: tls.tls_cert.clone().zip(tls.tls_key.clone()) })
            }
            (true, None) => anyhow::bail!(
                "{} is a rediss:// URL: give the CA that signs Redis's certificate with --tls-ca",
                self.redis
            ),
        };
        let options = |suffix: &str| RedisQueueOptions {
            outage_budget: Duration::from_secs(self.redis_outage_secs),
            tls: redis_tls.clone(),
            ..RedisQueueOptions::new(&self.redis, &format!("{}:{suffix}", self.streams))
        };
        let connect = || -> rlhf_queue::Result<StreamPair> {
            Ok((Arc::new(RedisQueue::connect(options("rollouts"))?), Arc::new(RedisQueue::connect(options("scored"))?)))
        };
        connect().with_context(|| format!("connecting to {}", self.redis))
    }
}

#[derive(Debug, Args)]
pub struct GeneratorArgs {
    #[command(flatten)]
    listen: Listen,
    /// The replica's name in rollouts and traces (default: generator-<port>).
    #[arg(long)]
    id: Option<String>,
    /// Fault injection for tests: pause this many milliseconds before each streamed rollout.
    #[arg(long, default_value_t = 0, hide = true)]
    stream_delay_ms: u64,
    /// Most sequences (prompts × samples per prompt) one request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_batch: usize,
    /// Most tokens (prompt plus new tokens) one sequence may take; never more than the model's
    /// context, which is the default.
    #[arg(long)]
    max_sequence_tokens: Option<usize>,
    /// Generation requests served at once; more are refused with RESOURCE_EXHAUSTED (the learner
    /// retries them on another replica).
    #[arg(long, default_value_t = 4)]
    max_concurrent: usize,
    /// Where the replica samples: cpu, or cuda / cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

#[derive(Debug, Args)]
pub struct ScorerArgs {
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    streams: Streams,
    /// The learner (`rlhf serve learner`) whose judges to load, e.g. http://127.0.0.1:50060.
    #[arg(long)]
    learner: String,
    /// Consumer name in the raw stream's group; each scorer needs its own (default:
    /// scorer-<hostname>, the pod name on Kubernetes). A scorer restarted under its name takes
    /// back what it held at once.
    #[arg(long)]
    consumer: Option<String>,
    /// Entries a scorer has not touched for this long are taken over by another: it died. A live
    /// scorer touches what it works on every third of this, however long the batch takes.
    #[arg(long, default_value_t = 10)]
    claim_after_secs: u64,
    /// Rollouts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Where the judges run: cpu, or cuda / cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

#[derive(Debug, Args)]
pub struct PreferencesArgs {
    #[command(flatten)]
    listen: Listen,
    /// The SQLite file (created if missing).
    #[arg(long, default_value = "preferences.sqlite")]
    db: PathBuf,
    /// Also serve the labeling app's HTTP API on this address (annotators log in with the token
    /// `rlhf annotators add` printed), e.g. 127.0.0.1:8080. Plain HTTP: put it behind a TLS proxy.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Minutes a task stays with the annotator who opened it before it goes back to the queue.
    #[arg(long, default_value_t = 10)]
    lease_minutes: u64,
    /// The annotators' guidelines, a Markdown file shown on the ranking page (default: the
    /// bundled ones).
    #[arg(long)]
    guidelines: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LearnerArgs {
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    streams: Streams,
    /// The run directory: created with the default config (or --config) if it does not exist.
    #[arg(long)]
    run_dir: PathBuf,
    /// Pipeline settings for a new run (see `rlhf config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Generator replicas: URLs, comma-separated (http://127.0.0.1:50061,http://127.0.0.1:50062),
    /// or one dns://NAME:PORT whose every address is a replica (a Kubernetes headless Service:
    /// dns://rlhf-generator.<namespace>.svc.cluster.local:50061), looked up again every
    /// --refresh-secs so that replicas may come and go during a run.
    #[arg(long, value_delimiter = ',', required = true)]
    generators: Vec<String>,
    /// Seconds between lookups of the generator replicas.
    #[arg(long, default_value_t = 10)]
    refresh_secs: u64,
    /// Prompts per generation request (a PPO step's prompts are spread over replicas in requests of this size).
    #[arg(long, default_value_t = 16)]
    prompts_per_request: usize,
    /// Requests in flight per replica.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Seconds a generation request may take before it is retried on another replica.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Train on rollouts at most this many policy versions old (0: strictly on-policy).
    #[arg(long, default_value_t = 0)]
    max_staleness: u64,
    /// The preference service (`rlhf serve preferences`) that collection submits rankings to
    /// and reward-model training reads them from; without it, the run's own SQLite file is
    /// used. Calls carry RLHF_LEARNER_TOKEN as a bearer token when it is set.
    #[arg(long)]
    preferences: Option<String>,
    /// Where SFT, reward-model training and the PPO update run: cpu, or cuda / cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

pub fn run(service: Service) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let name = match &service {
        Service::Generator(_) => "rlhf-generator",
        Service::Scorer(_) => "rlhf-scorer",
        Service::Preferences(_) => "rlhf-preferences",
        Service::Learner(_) => "rlhf-learner",
    };
    let _telemetry = {
        let _inside = runtime.enter();
        rlhf_rpc::telemetry::init(name)
    };
    let listen = match &service {
        Service::Generator(a) => &a.listen,
        Service::Scorer(a) => &a.listen,
        Service::Preferences(a) => &a.listen,
        Service::Learner(a) => &a.listen,
    };
    if listen.check_args {
        if let Service::Learner(args) = &service {
            if let Some(path) = &args.config {
                rlhf_pipeline::PipelineConfig::load(path)?.validate()?;
            }
            ppo_learner::discovery::resolver_for(&args.generators)?;
        }
        println!("{name}: arguments ok");
        return Ok(());
    }
    rlhf_rpc::drain::set_grace(Duration::from_secs(listen.drain_secs));
    let security = listen.tls.security()?;
    if let Some(addr) = listen.metrics {
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("metrics on {addr}"))?;
        tracing::info!(%addr, "metrics on /metrics");
        runtime.spawn(rlhf_rpc::metrics::serve(listener, std::future::pending()));
    }
    match service {
        Service::Generator(args) => runtime.block_on(async {
            let shutdown = rlhf_rpc::shutdown_signal();
            let listener = tokio::net::TcpListener::bind(args.listen.listen).await?;
            let device = args.device.open()?;
            let port = listener.local_addr()?.port();
            let id = args.id.unwrap_or_else(|| format!("generator-{port}"));
            tracing::info!(%id, addr = %args.listen.listen, "generator replica listening");
            let config = policy_generator::GeneratorServiceConfig {
                id,
                stream_delay: Duration::from_millis(args.stream_delay_ms),
                limits: policy_generator::Limits {
                    max_rows: args.max_batch.max(1),
                    max_sequence_tokens: args.max_sequence_tokens,
                    max_concurrent: args.max_concurrent.max(1),
                },
                security,
                device,
            };
            policy_generator::run(config, listener, shutdown).await?;
            Ok(())
        }),
        Service::Scorer(args) => {
            let device = args.device.open()?;
            let (raw, scored) = args.streams.open(&args.listen.tls)?;
            let fetch = Arc::new(reward_scorer::LearnerJudges {
                url: args.learner,
                handle: runtime.handle().clone(),
                token: client_token(&[Role::Scorer]),
            });
            let config = reward_scorer::ScorerServiceConfig {
                consumer: args.consumer.unwrap_or_else(|| format!("scorer-{}", hostname())),
                batch: args.batch,
                claim_after: Duration::from_secs(args.claim_after_secs.max(1)),
                security,
                device,
            };
            runtime.block_on(async {
                let shutdown = rlhf_rpc::shutdown_signal();
                let listener = tokio::net::TcpListener::bind(args.listen.listen).await?;
                tracing::info!(addr = %args.listen.listen, "scorer listening");
                reward_scorer::run(config, fetch, raw, scored, listener, shutdown).await.map_err(|e| anyhow::anyhow!(e))
            })
        }
        Service::Preferences(args) => {
            let store = preference_store::SqliteStore::open(&args.db)?;
            let app = match args.http {
                Some(_) => {
                    let board = preference_store::tasks::TaskBoard::open(&args.db, args.lease_minutes as i64 * 60_000)?;
                    let mut app = preference_store::web::App::new(board);
                    if let Some(path) = &args.guidelines {
                        let markdown = std::fs::read_to_string(path)
                            .with_context(|| format!("--guidelines {}", path.display()))?;
                        app = app.with_guidelines(markdown);
                    }
                    Some(app)
                }
                None => None,
            };
            runtime.block_on(async {
                let shutdown = rlhf_rpc::shutdown_signal();
                let listener = tokio::net::TcpListener::bind(args.listen.listen).await?;
                if let (Some(addr), Some(app)) = (args.http, app) {
                    let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--http {addr}"))?;
                    tracing::info!(%addr, "labeling app listening");
                    // Ends with the process, after the gRPC service has drained.
                    tokio::spawn(preference_store::web::serve(http, app));
                }
                tracing::info!(addr = %args.listen.listen, db = %args.db.display(), roles = ?security.tokens,
                    tls = security.tls.is_some(), "preference store listening");
                preference_store::run(
                    preference_store::PreferenceServiceConfig { security },
                    Box::new(store),
                    listener,
                    shutdown,
                )
                .await?;
                Ok(())
            })
        }
        Service::Learner(args) => run_learner(args, security),
    }
}

/// This machine's name (the pod name on Kubernetes).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

fn run_learner(args: LearnerArgs, security: rlhf_rpc::Security) -> Result<()> {
    let device = args.device.open()?;
    let run = RunDir::open_or_create(&args.run_dir, args.config.as_deref())?.on_device(device);
    let _lock = run.lock()?;
    let (raw, scored) = args.streams.open(&args.listen.tls)?;
    let store = match &args.preferences {
        Some(url) => Some(preference_store::RemoteStore::connect(url, client_token(&[Role::Learner, Role::Admin]))?),
        None => None,
    };
    let options = ppo_learner::LearnerOptions {
        generators: args.generators,
        cluster: ppo_learner::ClusterConfig {
            fanout: ppo_learner::FanoutConfig {
                in_flight_per_replica: args.in_flight.max(1),
                deadline: Duration::from_secs(args.deadline_secs),
                refresh_every: Duration::from_secs(args.refresh_secs.max(1)),
                token: client_token(&[Role::Learner]),
                ..Default::default()
            },
            prompts_per_request: args.prompts_per_request.max(1),
            max_staleness: args.max_staleness,
            ..Default::default()
        },
        security,
    };
    let listener = std::net::TcpListener::bind(args.listen.listen)?;
    tracing::info!(addr = %args.listen.listen, run = %run.root().display(), "learner listening");
    ppo_learner::serve(listener, options, raw, scored, |backend, board| {
        rlhf_pipeline::cluster::run_stages(&run, backend, board, store)
    })??;
    let summary = rlhf_pipeline::report::summary(&run)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("report: {}", run.path("report.html").display());
    Ok(())
}
