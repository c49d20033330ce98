//! End to end over real transport: a private redis-server, generator replicas and the other
//! services as child processes of the `rlhf` binary, on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ppo_learner::{ClusterBackend, ClusterConfig, StatusBoard};
use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_pipeline::{PipelineConfig, RunDir, Stage};
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_proto::v1::preference_store_client::PreferenceStoreClient;
use rlhf_proto::v1::{
    ExportPairsRequest, GeneratorStatusRequest, ListRankingsRequest, Ranking, StatsRequest, SubmitRankingRequest,
};
use rlhf_queue::{Queue, RedisQueue, RedisQueueOptions};
use rlhf_types::{ScoredRollout, ScoringRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TINY: &str = r#"{"model": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
    "world": {"sft_responses_per_prompt": 2}, "sft": {"epochs": 1},
    "collect": {"rounds": 1, "train_prompts": 24}, "reward_model": {"epochs": 1},
    "ppo": {"steps": 6, "prompts_per_step": 16, "eval_every": 3, "max_new_tokens": 16,
            "eval_samples_per_prompt": 4}}"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlhf")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const QUIET: [(&str, &str); 2] = [("RUST_BACKTRACE", "0"), ("RUST_LOG", "warn")];

/// A generator replica on a free port.
fn generator(name: &str, port: u16, extra: &[&str]) -> Child {
    let mut a = args(&["serve", "generator", "--listen", &format!("127.0.0.1:{port}"), "--id", name]);
    a.extend(args(extra));
    let child = Child::spawn(name, bin(), &a, &QUIET).unwrap();
    wait_for_port(port, Duration::from_secs(30)).unwrap();
    child
}

/// A scorer on a free port that gets its judges from the learner at `learner` (it needs no
/// files: it runs in a directory of its own).
fn scorer(learner: &str, redis: &RedisServer, streams: &str) -> Child {
    scorer_with(learner, redis, streams, &[])
}

fn scorer_with(learner: &str, redis: &RedisServer, streams: &str, extra: &[&str]) -> Child {
    let port = free_port();
    let mut a = args(&[
        "serve",
        "scorer",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--learner",
        learner,
        "--redis",
        &redis.url(),
        "--streams",
        streams,
    ]);
    a.extend(args(extra));
    let child = Child::spawn("scorer", bin(), &a, &QUIET).unwrap();
    wait_for_port(port, Duration::from_secs(30)).unwrap();
    child
}

/// `GET /metrics` on `port`: the body, or `None` while nothing answers.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    Some(body.to_string())
}

/// `promtool check metrics` (Debian package `prometheus`) accepts `text` without a complaint.
fn assert_promtool_accepts(service: &str, text: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus; .ci/run does it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool on the {service}'s metrics: {said}\n{text}");
}

/// The value of the unlabelled sample `name` in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn status(rt: &tokio::runtime::Runtime, port: u16) -> Option<rlhf_proto::v1::GeneratorStatus> {
    rt.block_on(async {
        let mut client = PolicyGeneratorClient::connect(url(port)).await.ok()?;
        Some(client.get_status(GeneratorStatusRequest {}).await.ok()?.into_inner())
    })
}

fn health(rt: &tokio::runtime::Runtime, port: u16) -> Option<ServingStatus> {
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url(port)).ok()?.connect().await.ok()?;
        let mut client = HealthClient::new(channel);
        let reply = client.check(HealthCheckRequest { service: String::new() }).await.ok()?.into_inner();
        ServingStatus::try_from(reply.status).ok()
    })
}

/// The services a server lists through gRPC reflection (what `grpcurl list` shows), asked in
/// reflection version `$pb` (v1, or v1alpha as older clients do).
macro_rules! reflected_services {
    ($pb:ident, $rt:expr, $port:expr) => {{
        use tonic_reflection::pb::$pb::ServerReflectionRequest;
        use tonic_reflection::pb::$pb::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$pb::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$pb::server_reflection_response::MessageResponse;
        $rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(url($port)).unwrap().connect().await.unwrap();
            let mut client = ServerReflectionClient::new(channel);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
            let reply = replies.message().await.unwrap().unwrap();
            match reply.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                    names.sort();
                    names
                }
                other => panic!("unexpected reflection reply {other:?}"),
            }
        })
    }};
}

/// A run directory with SFT, collection and the reward model done, ready for PPO.
fn prepared_run(dir: &Path) -> RunDir {
    let config: PipelineConfig = serde_json::from_str(TINY).unwrap();
    let run = RunDir::create(&dir.join("run"), &config).unwrap();
    for stage in [Stage::Sft, Stage::Collect, Stage::RewardModel] {
        rlhf_pipeline::run_stage(&run, stage).unwrap();
    }
    run
}

fn ppo_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "ppo")
        .collect()
}

fn streams(redis: &RedisServer, prefix: &str) -> (RedisQueue<ScoringRequest>, RedisQueue<ScoredRollout>) {
    (
        RedisQueue::connect(RedisQueueOptions::new(&redis.url(), &format!("{prefix}:rollouts"))).unwrap(),
        RedisQueue::connect(RedisQueueOptions::new(&redis.url(), &format!("{prefix}:scored"))).unwrap(),
    )
}

/// Every PPO step trained on exactly its prompts' rollouts, once each.
fn assert_every_step_complete(run: &Path, steps: usize, prompts_per_step: u64) {
    let records = ppo_records(run);
    assert_eq!(records.len(), steps, "one metrics record per PPO step");
    for r in &records {
        assert_eq!(r["rollouts"].as_u64(), Some(prompts_per_step), "a rollout was lost: {r}");
        assert_eq!(r["duplicates_skipped"].as_u64(), Some(0), "a duplicate reached the learner: {r}");
    }
}

#[test]
fn four_services_as_processes_run_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    // The learner creates the run and runs every stage through the services.
    let run_root = dir.path().join("run");
    std::fs::create_dir_all(&run_root).unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(&config, TINY).unwrap();
    let redis = RedisServer::start().unwrap();
    let (g1, g2) = (free_port(), free_port());
    // Every service serves /metrics on a port of its own.
    let [m_gen, m_scorer, m_prefs, m_learner] = [free_port(), free_port(), free_port(), free_port()];
    let metrics_arg = |port: u16| format!("127.0.0.1:{port}");
    let _generators = [generator("gen-a", g1, &["--metrics", &metrics_arg(m_gen)]), generator("gen-b", g2, &[])];
    let learner_port = free_port();
    let _scorer = scorer_with(&url(learner_port), &redis, "e2e", &["--metrics", &metrics_arg(m_scorer)]);
    let prefs_port = free_port();
    // The preference store owns its database; the learner owns the run directory.
    std::fs::create_dir_all(dir.path().join("preferences")).unwrap();
    let db = dir.path().join("preferences/preferences.sqlite");
    let with_token = [("RUST_BACKTRACE", "0"), ("RUST_LOG", "warn"), ("RLHF_PREFERENCES_TOKEN", "s3cret")];
    let _prefs = Child::spawn(
        "preferences",
        bin(),
        &args(&[
            "serve",
            "preferences",
            "--listen",
            &format!("127.0.0.1:{prefs_port}"),
            "--db",
            db.to_str().unwrap(),
            "--metrics",
            &metrics_arg(m_prefs),
        ]),
        &with_token,
    )
    .unwrap();
    wait_for_port(prefs_port, Duration::from_secs(30)).unwrap();

    // Replicas start empty: not serving until the learner pushes weights.
    let rt = runtime();
    assert_eq!(health(&rt, g1), Some(ServingStatus::NotServing));
    // Reflection lists what this process serves, nothing else, in both protocol versions.
    let listed = reflected_services!(v1, rt, g1);
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "rlhf.v1.PolicyGenerator"
        ]
    );
    assert_eq!(reflected_services!(v1alpha, rt, g1), listed);

    let generators = format!("{},{}", url(g1), url(g2));
    let mut learner = Child::spawn(
        "learner",
        bin(),
        &args(&[
            "serve",
            "learner",
            "--listen",
            &format!("127.0.0.1:{learner_port}"),
            "--run-dir",
            run_root.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--redis",
            &redis.url(),
            "--streams",
            "e2e",
            "--generators",
            &generators,
            "--prompts-per-request",
            "4",
            "--preferences",
            &url(prefs_port),
            "--metrics",
            &metrics_arg(m_learner),
        ]),
        &with_token,
    )
    .unwrap();
    // The learner's metrics, once it has trained a step (it exits when the run ends).
    let started = Instant::now();
    let learner_metrics = loop {
        assert!(started.elapsed() < Duration::from_secs(300), "the learner never reported a trained step");
        if let Some(text) = scrape(m_learner).filter(|t| t.contains("rlhf_rollouts_trained_total 16")) {
            break text;
        }
        assert!(learner.is_running(), "the learner ended before its metrics were scraped");
        std::thread::sleep(Duration::from_millis(100));
    };
    let exit = learner.wait_timeout(Duration::from_secs(300)).expect("the learner finishes");
    assert!(exit.success(), "learner failed: {exit:?}");
    let run = RunDir::open(&run_root).unwrap();
    let collected = run.state().unwrap().collect.expect("collection ran");
    assert!(collected.rankings > 0);
    assert!(run.path("summary.json").exists() && run.path("report.html").exists());
    assert_every_step_complete(run.root(), 6, 16);

    // Every service's metrics pass promtool's lint, and say what happened.
    let generator_metrics = scrape(m_gen).unwrap();
    let scorer_metrics = scrape(m_scorer).unwrap();
    let preference_metrics = scrape(m_prefs).unwrap();
    for (service, text) in [
        ("generator", &generator_metrics),
        ("scorer", &scorer_metrics),
        ("preference store", &preference_metrics),
        ("learner", &learner_metrics),
    ] {
        assert_promtool_accepts(service, text);
    }
    // Latency of the gRPC calls each took (nobody calls the scorer: its work comes by Redis).
    for (service, text, method) in [
        ("generator", &generator_metrics, "Generate"),
        ("preference store", &preference_metrics, "SubmitRanking"),
        ("learner", &learner_metrics, "GetJudges"),
    ] {
        let series = format!("rlhf_grpc_request_duration_seconds_count{{method=\"{method}\"");
        assert!(text.contains(&series), "{service}: no latency of {method}\n{text}");
    }
    assert!(sample(&generator_metrics, "rlhf_rollouts_generated_total") > 0.0);
    assert!(sample(&generator_metrics, "rlhf_tokens_generated_total") > 0.0);
    assert_eq!(sample(&generator_metrics, "rlhf_weight_version"), 6.0);
    assert!(sample(&scorer_metrics, "rlhf_rollouts_scored_total") >= 6.0 * 16.0);
    assert!(scorer_metrics.contains("rlhf_stream_pending_entries{stream=\"rollouts\"}"), "{scorer_metrics}");
    assert!(sample(&learner_metrics, "rlhf_ppo_step_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&learner_metrics, "rlhf_reward_hacking_alarm"), 0.0);

    // Both replicas took work and serve the final version.
    for port in [g1, g2] {
        let s = status(&rt, port).unwrap();
        assert!(s.ready);
        assert_eq!(s.serving_version, 6);
        assert_eq!(health(&rt, port), Some(ServingStatus::Serving));
    }
    // A corrupted weight update is refused and the replica keeps serving its version.
    rt.block_on(async {
        let config: rlhf_model::Config =
            serde_json::from_str(&std::fs::read_to_string(run.path("ppo/config.json")).unwrap()).unwrap();
        let tensors =
            candle_core::safetensors::load(run.path("ppo/model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let policy: std::collections::HashMap<_, _> =
            tensors.into_iter().filter(|(name, _)| !name.starts_with("value_head")).collect();
        let mut chunks = rlhf_proto::weights::encode(7, &policy, &config, 0).unwrap();
        chunks[3].data[0] ^= 1;
        let mut client = PolicyGeneratorClient::connect(url(g1)).await.unwrap();
        let refused = client.update_weights(tokio_stream::iter(chunks)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains("checksum"), "{refused}");
    });
    assert_eq!(status(&rt, g1).unwrap().serving_version, 6);
    // Requests beyond the model's context or the batch cap are refused before any work, and the
    // replica goes on serving.
    rt.block_on(async {
        let mut client = PolicyGeneratorClient::connect(url(g1)).await.unwrap();
        let request = |tokens: usize, max_new_tokens: u32, samples_per_prompt: u32| rlhf_proto::v1::GenerateRequest {
            request_id: "limits".into(),
            prompts: vec![rlhf_proto::v1::Prompt {
                prompt_id: "p".into(),
                text: String::new(),
                token_ids: vec![1; tokens],
            }],
            sampling: Some(rlhf_proto::v1::SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                max_new_tokens,
                seed: 1,
                ..Default::default()
            }),
            samples_per_prompt,
            min_policy_version: 0,
        };
        for (tokens, new, samples, what) in [
            (100_000, 8, 1, "a 100,000-token prompt"),
            (4, 2_000_000_000, 1, "max_new_tokens in the billions"),
            (4, 8, 5_000, "5,000 sequences in one request"),
        ] {
            let started = Instant::now();
            let refused = client.generate(request(tokens, new, samples)).await.expect_err(what);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{what}: {refused}");
            assert!(started.elapsed() < Duration::from_secs(5), "{what} was not refused before work");
        }
        let mut stream = client.generate(request(4, 4, 2)).await.unwrap().into_inner();
        let mut rollouts = 0;
        while stream.message().await.unwrap().is_some() {
            rollouts += 1;
        }
        assert_eq!(rollouts, 2, "the replica still serves");
    });
    // Everything the learner consumed was acknowledged after the final checkpoint, and freed.
    let (raw, scored) = streams(&redis, "e2e");
    assert_eq!((raw.pending().unwrap(), scored.pending().unwrap()), (0, 0));
    assert_eq!((raw.stored().unwrap(), scored.stored().unwrap()), (0, 0));
    assert_eq!(scored.dead_letters().unwrap(), 0);

    // The preference store serves the run's rankings and guards writes with the token.
    rt.block_on(async {
        let mut client =
            PreferenceStoreClient::connect(url(prefs_port)).await.unwrap().max_encoding_message_size(64 << 20);
        fn authed<T>(message: T) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
            request
        }
        // Reads need the token too: the rankings are the team's data.
        assert_eq!(client.stats(StatsRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        let before = client.stats(authed(StatsRequest {})).await.unwrap().into_inner();
        // Every ranking the learner collected went through the service.
        assert_eq!(before.rankings, collected.rankings);
        assert_eq!(sample(&preference_metrics, "rlhf_preference_rankings_stored_total"), collected.rankings as f64);
        let bad =
            Ranking { ranking_id: "r-x".into(), prompt_id: "nope".into(), order: vec![0, 0], ..Default::default() };
        let refused = client.submit_ranking(SubmitRankingRequest { ranking: Some(bad.clone()) }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            client.submit_ranking(authed(SubmitRankingRequest { ranking: Some(bad) })).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // A 52 MB ranking: refused from its headers without a token, unread with one.
        let huge = Ranking {
            ranking_id: "r-huge".into(),
            prompt_id: "p".into(),
            order: vec![0],
            responses: vec![rlhf_proto::v1::RankedResponse {
                response_id: "x".into(),
                text: "a".repeat(52 << 20),
                token_ids: vec![],
            }],
            ..Default::default()
        };
        let started = Instant::now();
        let refused = client.submit_ranking(SubmitRankingRequest { ranking: Some(huge.clone()) }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
        let refused = client.submit_ranking(authed(SubmitRankingRequest { ranking: Some(huge) })).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(client.stats(authed(StatsRequest {})).await.unwrap().into_inner(), before);
        // Rankings stream back whole, and pairs are derived from them: C(K, 2) each.
        let mut rankings = client.list_rankings(authed(ListRankingsRequest::default())).await.unwrap().into_inner();
        let mut listed = 0;
        let mut expected_pairs = 0;
        while let Some(r) = rankings.message().await.unwrap() {
            listed += 1;
            expected_pairs += r.order.len() * (r.order.len() - 1) / 2;
        }
        assert_eq!(listed, before.rankings);
        let mut pairs = client.export_pairs(authed(ExportPairsRequest::default())).await.unwrap().into_inner();
        let mut exported = 0;
        while let Some(p) = pairs.message().await.unwrap() {
            assert_ne!(p.chosen.unwrap().response_id, p.rejected.unwrap().response_id);
            exported += 1;
        }
        assert_eq!((exported, exported as u64), (expected_pairs, before.pairs));
    });
}

#[test]
fn a_replica_killed_mid_batch_loses_nothing_and_comes_back_with_current_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    let redis = RedisServer::start().unwrap();
    let (g1, g2) = (free_port(), free_port());
    // Replica B streams slowly (150 ms before each rollout), so that a kill lands in the
    // middle of a batch even when the machine is busy.
    let _a = generator("gen-a", g1, &[]);
    let mut b = generator("gen-b", g2, &["--stream-delay-ms", "150"]);
    // The learner's own service, which the scorer gets its judges from.
    let service = runtime();
    let board = Arc::new(StatusBoard::default());
    let learner_port = free_port();
    let listener = service.block_on(tokio::net::TcpListener::bind(("127.0.0.1", learner_port))).unwrap();
    service.spawn(ppo_learner::run(board.clone(), listener, std::future::pending()));
    let _scorer = scorer(&url(learner_port), &redis, "kill");

    let (raw, scored) = streams(&redis, "kill");
    let config = ClusterConfig {
        prompts_per_request: 4,
        fanout: ppo_learner::FanoutConfig { deadline: Duration::from_secs(60), ..Default::default() },
        ..Default::default()
    };
    let mut backend = ClusterBackend::new(&[url(g1), url(g2)], Arc::new(raw), Arc::new(scored), config).unwrap();
    let announced = board.clone();
    let learner = {
        let run = RunDir::open(run.root()).unwrap();
        std::thread::spawn(move || {
            let config = run.config().unwrap();
            let scorer = Arc::new(rlhf_pipeline::ppo::prepared_scorer(&run, &config).unwrap());
            let result = rlhf_pipeline::ppo::run_with(&run, &config, scorer, &mut backend, &board);
            (result, backend)
        })
    };

    // Kill B (SIGKILL) while it is in the middle of a request of a step after the first.
    let rt = runtime();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(120), "replica B never got a request after step 1");
        if status(&rt, g2).is_some_and(|s| s.in_flight_requests > 0 && s.serving_version >= 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill();
    std::thread::sleep(Duration::from_millis(300));
    b.start().unwrap();
    wait_for_port(g2, Duration::from_secs(30)).unwrap();

    let (result, backend) = learner.join().unwrap();
    let result = result.expect("PPO completes despite the dead replica");
    assert_eq!(result.steps, 6);
    assert_every_step_complete(run.root(), 6, 16);
    let replicas = backend.replicas();
    assert!(replicas[1].failures >= 1, "the kill did not hit a request: {replicas:?}");
    assert_eq!(backend.counters().duplicates_dropped + backend.counters().foreign_dropped, 0);
    // The scorer judged every rollout with the judges this learner announced, fetched over gRPC.
    assert_eq!(backend.counters().rescored, 0);
    assert_eq!(announced.judges_version(), Some(ppo_learner::RolloutBackend::judges_version(&backend)));

    // The restarted replica was given the current weights.
    let s = status(&rt, g2).expect("replica B is back");
    assert!(s.ready, "restarted replica has no weights");
    assert_eq!(s.serving_version, 6);
    let (raw, scored) = streams(&redis, "kill");
    assert_eq!((raw.pending().unwrap(), scored.pending().unwrap()), (0, 0));
}

#[test]
fn a_scorer_restarted_under_its_own_name_takes_back_what_it_held_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    let redis = RedisServer::start().unwrap();
    let g = free_port();
    let _generator = generator("gen-a", g, &[]);
    let service = runtime();
    let board = Arc::new(StatusBoard::default());
    let learner_port = free_port();
    let listener = service.block_on(tokio::net::TcpListener::bind(("127.0.0.1", learner_port))).unwrap();
    service.spawn(ppo_learner::run(board.clone(), listener, std::future::pending()));
    let (raw, scored) = streams(&redis, "own");
    let config = ClusterConfig { prompts_per_request: 16, ..Default::default() };
    let mut backend = ClusterBackend::new(&[url(g)], Arc::new(raw), Arc::new(scored), config).unwrap();
    let learner = {
        let (run, board) = (RunDir::open(run.root()).unwrap(), board.clone());
        std::thread::spawn(move || {
            let config = run.config().unwrap();
            let scorer = Arc::new(rlhf_pipeline::ppo::prepared_scorer(&run, &config).unwrap());
            rlhf_pipeline::ppo::run_with(&run, &config, scorer, &mut backend, &board)
        })
    };
    // A scorer named scorer-own takes the first step's 16 rollouts and dies before scoring them.
    let (raw, _) = streams(&redis, "own");
    let mut held = vec![];
    let start = Instant::now();
    while held.len() < 16 {
        assert!(start.elapsed() < Duration::from_secs(120), "the learner never sent its first step");
        held.extend(raw.pop("scorer-own", 16, Duration::from_millis(200)).unwrap());
    }
    assert_eq!(raw.pending().unwrap(), 16);
    // Its successor under the same name scores them at once, not after the 30 s claim threshold.
    let restarted = Instant::now();
    let _scorer = scorer_with(&url(learner_port), &redis, "own", &["--consumer", "scorer-own"]);
    while ppo_records(run.root()).is_empty() {
        assert!(restarted.elapsed() < Duration::from_secs(60), "the first step never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = restarted.elapsed();
    assert!(waited < Duration::from_secs(10), "the first step came {waited:?} after the restart");
    eprintln!("first step trained {waited:?} after the scorer restarted");
    let result = learner.join().unwrap().expect("PPO completes");
    assert_eq!(result.steps, 6);
    assert_every_step_complete(run.root(), 6, 16);
}

#[test]
fn services_exit_on_sigterm_even_while_waiting_for_a_model() {
    let redis = RedisServer::start().unwrap();
    // A scorer whose learner is not up waits for its judges; SIGTERM must still stop it.
    let nobody = url(free_port());
    let mut waiting = scorer(&nobody, &redis, "term");
    let port = free_port();
    let mut replica = generator("gen-term", port, &[]);
    for child in [&mut waiting, &mut replica] {
        child.terminate();
        let status = child.wait_timeout(Duration::from_secs(20)).expect("exits after SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

fn ppo_checkpoint_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|s| s["ppo_progress"]["step"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_learner_killed_between_checkpoints_resumes_and_leaves_nothing_pending() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    // More steps than the other tests, so that the kill lands between two checkpoints.
    let mut config = run.config().unwrap();
    config.ppo.steps = 30;
    std::fs::write(run.path("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let redis = RedisServer::start().unwrap();
    let (g1, g2) = (free_port(), free_port());
    let _generators = [generator("gen-a", g1, &[]), generator("gen-b", g2, &[])];
    let learner_port = free_port();
    let _scorer = scorer(&url(learner_port), &redis, "restart");
    let generators = format!("{},{}", url(g1), url(g2));
    let learner_args = args(&[
        "serve",
        "learner",
        "--listen",
        &format!("127.0.0.1:{learner_port}"),
        "--run-dir",
        run.root().to_str().unwrap(),
        "--redis",
        &redis.url(),
        "--streams",
        "restart",
        "--generators",
        &generators,
        "--prompts-per-request",
        "4",
    ]);
    let mut learner = Child::spawn("learner", bin(), &learner_args, &QUIET).unwrap();
    let start = Instant::now();
    // Kill it after it trained step 4 but before its next checkpoint (after step 6).
    let trained = |run: &Path| {
        std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.matches("\"stage\":\"ppo\"").count())
    };
    while !(trained(run.root()) >= 4 && ppo_checkpoint_step(run.root()) == 3) {
        assert!(start.elapsed() < Duration::from_secs(120), "never between checkpoints 3 and 6");
        assert!(learner.is_running(), "the learner ended before it could be killed");
        std::thread::sleep(Duration::from_millis(1));
    }
    learner.kill();
    // It trained on entries it must not acknowledge before a checkpoint covers them.
    let (raw, scored) = streams(&redis, "restart");
    let left = scored.pending().unwrap();
    assert!(left >= 16, "only {left} entries pending after an unacknowledged step");

    let mut learner = Child::spawn("learner", bin(), &learner_args, &QUIET).unwrap();
    let exit = learner.wait_timeout(Duration::from_secs(300)).expect("the restarted learner finishes");
    assert!(exit.success(), "{exit:?}");
    // Every step from the checkpoint on was trained again, completely, once per incarnation.
    let records = ppo_records(run.root());
    // metrics.jsonl keeps one record per step: the killed incarnation's steps after its
    // checkpoint were dropped when they were trained again.
    let steps: Vec<u64> = records.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<u64>>());
    assert!(records.iter().all(|r| r["rollouts"] == 16 && r["duplicates_skipped"] == 0));
    // What the first incarnation held was released, and nothing is pending or stored now.
    assert_eq!((raw.pending().unwrap(), scored.pending().unwrap()), (0, 0), "{left} were pending at the kill");
    assert_eq!(scored.stored().unwrap(), 0);
    assert_eq!(scored.dead_letters().unwrap(), 0);
}
