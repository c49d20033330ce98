//! Processes killed and restarted in the middle of a run, and shutdown on SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use ppo_learner::{ClusterBackend, ClusterConfig, StatusBoard};
use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_pipeline::RunDir;
use rlhf_queue::Queue;

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
    service.spawn(ppo_learner::run(board.clone(), listener, Default::default(), std::future::pending()));
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
    service.spawn(ppo_learner::run(board.clone(), listener, Default::default(), std::future::pending()));
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
    // Its successor under the same name scores them at once, not after the claim threshold
    // (set long here, so that only the take-back can pass the test).
    let restarted = Instant::now();
    let _scorer =
        scorer_with(&url(learner_port), &redis, "own", &["--consumer", "scorer-own", "--claim-after-secs", "60"]);
    while ppo_records(run.root()).is_empty() {
        assert!(restarted.elapsed() < Duration::from_secs(60), "the first step never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = restarted.elapsed();
    assert!(waited < Duration::from_secs(5), "the first step came {waited:?} after the restart");
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

/// SIGTERM in the middle of a stream: NOT_SERVING at once, new calls refused, the stream in
/// flight finishes, and the process exits 0 within its drain grace.
#[test]
fn sigterm_drains_a_replica_as_kubernetes_expects() {
    use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
    use tonic_health::pb::health_check_response::ServingStatus;

    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    let port = free_port();
    // 500 ms before each streamed rollout: eight rollouts take 4 s to send.
    let mut replica = generator("gen-drain", port, &["--stream-delay-ms", "500", "--drain-secs", "10"]);
    let rt = runtime();
    let sft = rlhf_data::load_checkpoint(&run.path("sft")).unwrap();
    let mut client = rt.block_on(PolicyGeneratorClient::connect(url(port))).unwrap();
    let chunks = rlhf_proto::weights::encode(1, &sft.tensors, &sft.config, sft.tokenizer.pad_id).unwrap();
    rt.block_on(client.update_weights(tokio_stream::iter(chunks))).unwrap();
    let request = rlhf_proto::v1::GenerateRequest {
        request_id: "drain".into(),
        prompts: vec![rlhf_proto::v1::Prompt { prompt_id: "p".into(), text: String::new(), token_ids: vec![1, 2, 3] }],
        sampling: Some(rlhf_proto::v1::SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 8,
            seed: 1,
            ..Default::default()
        }),
        samples_per_prompt: 8,
        min_policy_version: 0,
    };
    let streaming = {
        let (mut client, request) = (client.clone(), request.clone());
        rt.spawn(async move {
            let mut stream = client.generate(request).await.unwrap().into_inner();
            let mut rollouts = 0;
            while stream.message().await.unwrap().is_some() {
                rollouts += 1;
            }
            rollouts
        })
    };
    while status(&rt, port).is_none_or(|s| s.in_flight_requests == 0) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let terminated = Instant::now();
    replica.terminate();
    // At once: NOT_SERVING to a probe, UNAVAILABLE to new work.
    let mut seen = None;
    while terminated.elapsed() < Duration::from_secs(3) {
        seen = health(&rt, port);
        if seen == Some(ServingStatus::NotServing) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen, Some(ServingStatus::NotServing), "health after SIGTERM");
    let refused = rt.block_on(client.generate(request)).expect_err("new work while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    // The stream in flight finishes, and the process exits 0 within the grace.
    assert_eq!(rt.block_on(streaming).unwrap(), 8, "the stream in flight was cut");
    let exit = replica.wait_timeout(Duration::from_secs(15)).expect("exits within its grace");
    assert!(exit.success(), "{exit:?}");
    assert!(terminated.elapsed() < Duration::from_secs(12), "exit took {:?}", terminated.elapsed());
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
