//! The four services run the whole pipeline, and what they expose on the way.

use std::time::{Duration, Instant};

use crate::support::*;
use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_pipeline::RunDir;
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_proto::v1::preference_store_client::PreferenceStoreClient;
use rlhf_proto::v1::{ExportPairsRequest, ListRankingsRequest, Ranking, StatsRequest, SubmitRankingRequest};
use rlhf_queue::Queue;
use tonic_health::pb::health_check_response::ServingStatus;

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
    let with_token = [("RUST_BACKTRACE", "0"), ("RUST_LOG", "warn"), ("RLHF_LEARNER_TOKEN", "s3cret")];
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
