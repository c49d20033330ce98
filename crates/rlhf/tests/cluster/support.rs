//! What the cluster tests share: the `rlhf` binary as child processes, scraping, streams and
//! the checks every test makes of a run.

use std::path::Path;
use std::time::Duration;

use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_pipeline::{PipelineConfig, RunDir, Stage};
use rlhf_proto::v1::GeneratorStatusRequest;
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_queue::{RedisQueue, RedisQueueOptions};
use rlhf_types::{ScoredRollout, ScoringRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A small pipeline: SFT, collection and the reward model in seconds, six PPO steps.
pub const TINY: &str = r#"{"model": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
    "world": {"sft_responses_per_prompt": 2}, "sft": {"epochs": 1},
    "collect": {"rounds": 1, "train_prompts": 24}, "reward_model": {"epochs": 1},
    "ppo": {"steps": 6, "prompts_per_step": 16, "eval_every": 3, "max_new_tokens": 16,
            "eval_samples_per_prompt": 4}}"#;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlhf")
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub const QUIET: [(&str, &str); 2] = [("RUST_BACKTRACE", "0"), ("RUST_LOG", "warn")];

/// A generator replica on a free port.
pub fn generator(name: &str, port: u16, extra: &[&str]) -> Child {
    let mut a = args(&["serve", "generator", "--listen", &format!("127.0.0.1:{port}"), "--id", name]);
    a.extend(args(extra));
    let child = Child::spawn(name, bin(), &a, &QUIET).unwrap();
    wait_for_port(port, Duration::from_secs(30)).unwrap();
    child
}

/// A scorer on a free port that gets its judges from the learner at `learner` (it needs no
/// files: it runs in a directory of its own).
pub fn scorer(learner: &str, redis: &RedisServer, streams: &str) -> Child {
    scorer_with(learner, redis, streams, &[])
}

pub fn scorer_with(learner: &str, redis: &RedisServer, streams: &str, extra: &[&str]) -> Child {
    scorer_on(free_port(), learner, redis, streams, extra)
}

/// A scorer listening on `port`, for tests that ask it for its health.
pub fn scorer_on(port: u16, learner: &str, redis: &RedisServer, streams: &str, extra: &[&str]) -> Child {
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
pub fn scrape(port: u16) -> Option<String> {
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
pub fn assert_promtool_accepts(service: &str, text: &str) {
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
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

pub fn status(rt: &tokio::runtime::Runtime, port: u16) -> Option<rlhf_proto::v1::GeneratorStatus> {
    rt.block_on(async {
        let mut client = PolicyGeneratorClient::connect(url(port)).await.ok()?;
        Some(client.get_status(GeneratorStatusRequest {}).await.ok()?.into_inner())
    })
}

pub fn health(rt: &tokio::runtime::Runtime, port: u16) -> Option<ServingStatus> {
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
pub fn prepared_run(dir: &Path) -> RunDir {
    let config: PipelineConfig = serde_json::from_str(TINY).unwrap();
    let run = RunDir::create(&dir.join("run"), &config).unwrap();
    for stage in [Stage::Sft, Stage::Collect, Stage::RewardModel] {
        rlhf_pipeline::run_stage(&run, stage).unwrap();
    }
    run
}

pub fn ppo_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "ppo")
        .collect()
}

pub fn streams(redis: &RedisServer, prefix: &str) -> (RedisQueue<ScoringRequest>, RedisQueue<ScoredRollout>) {
    (
        RedisQueue::connect(RedisQueueOptions::new(&redis.url(), &format!("{prefix}:rollouts"))).unwrap(),
        RedisQueue::connect(RedisQueueOptions::new(&redis.url(), &format!("{prefix}:scored"))).unwrap(),
    )
}

/// Every PPO step trained on exactly its prompts' rollouts, once each.
pub fn assert_every_step_complete(run: &Path, steps: usize, prompts_per_step: u64) {
    let records = ppo_records(run);
    assert_eq!(records.len(), steps, "one metrics record per PPO step");
    for r in &records {
        assert_eq!(r["rollouts"].as_u64(), Some(prompts_per_step), "a rollout was lost: {r}");
        assert_eq!(r["duplicates_skipped"].as_u64(), Some(0), "a duplicate reached the learner: {r}");
    }
}

pub fn ppo_checkpoint_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|s| s["ppo_progress"]["step"].as_u64())
        .unwrap_or(0)
}
