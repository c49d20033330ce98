//! The learner's fan-out against real generator servers on loopback (in-process): a replica that hangs
//! past the deadline has its work retried on the other, which serves the pushed version; and the
//! learner's own status and checkpoint RPCs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use policy_generator::GeneratorServiceConfig;
use ppo_learner::discovery::{Resolution, Resolver};
use ppo_learner::{Fanout, FanoutConfig, FanoutError};
use rlhf_model::{Config, seeded_var_builder};
use rlhf_types::{GenerateRequest, PromptTokens, SamplingParams};

fn weights() -> (Config, HashMap<String, Tensor>) {
    let cfg = Config::tiny(20, 16, 1, 2, 1);
    let varmap = VarMap::new();
    rlhf_model::Llama::new(&cfg, seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu)).unwrap();
    let tensors = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    (cfg, tensors)
}

/// Starts a replica on a free port; returns its URL.
async fn replica(id: &str, stream_delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = GeneratorServiceConfig {
        id: id.into(),
        stream_delay,
        limits: Default::default(),
        security: Default::default(),
        device: candle_core::Device::Cpu,
    };
    tokio::spawn(policy_generator::run(config, listener, std::future::pending()));
    url
}

fn requests(n: usize) -> Vec<GenerateRequest> {
    (0..n)
        .map(|i| GenerateRequest {
            request_id: format!("req-{i}"),
            prompts: vec![PromptTokens { prompt_id: format!("p{i}"), tokens: vec![1, 2, 3] }],
            sampling: SamplingParams { max_new_tokens: 4, seed: i as u64, ..Default::default() },
            samples_per_prompt: 2,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_passes_its_deadline_and_its_work_moves_to_the_other() {
    let healthy = replica("healthy", Duration::ZERO).await;
    let hung = replica("hung", Duration::from_secs(30)).await;
    let (cfg, tensors) = weights();
    let chunks = Arc::new(rlhf_proto::weights::encode(3, &tensors, &cfg, 0).unwrap());
    let config = FanoutConfig {
        in_flight_per_replica: 1,
        deadline: Duration::from_millis(1500),
        max_attempts: 4,
        cooldown: Duration::from_millis(100),
        ..Default::default()
    };
    let mut fanout = Fanout::new(&[healthy.clone(), hung.clone()], config).unwrap();
    let mut delivered: Vec<(String, String, u64)> = vec![];
    let mut traces = HashSet::new();
    fanout
        .generate(&requests(4), 3, chunks, |request, rollouts, traceparent| {
            traces.insert(traceparent.to_string());
            for r in rollouts {
                assert!(r.rollout_id.as_str().starts_with(&request.request_id));
                delivered.push((r.rollout_id.0, r.generator_id, r.policy_version));
            }
        })
        .await
        .unwrap();
    // Every rollout exactly once, all from the healthy replica, all of the pushed version.
    let ids: HashSet<_> = delivered.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!((delivered.len(), ids.len()), (8, 8));
    assert!(delivered.iter().all(|(_, g, v)| g == "healthy" && *v == 3), "{delivered:?}");
    assert_eq!(traces.len(), 4, "one trace per request");
    let report = fanout.report();
    assert!(report[1].failures >= 1, "{report:?}");
    assert_eq!(report[0].serving, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_a_request_gives_up_after_its_attempts() {
    // Nothing listens on these ports.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        })
        .collect();
    let (cfg, tensors) = weights();
    let chunks = Arc::new(rlhf_proto::weights::encode(1, &tensors, &cfg, 0).unwrap());
    let config = FanoutConfig { cooldown: Duration::from_millis(10), max_attempts: 3, ..Default::default() };
    let mut fanout = Fanout::new(&dead, config).unwrap();
    let err = fanout.generate(&requests(1), 1, chunks, |_, _, _| panic!("nothing to deliver")).await.unwrap_err();
    assert!(matches!(err, FanoutError::GaveUp { attempts: 3, .. }), "{err}");
}

/// A client whose deadline passes: the replica stops decoding within a step (the counter moves)
/// instead of finishing minutes of work nobody waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_whose_deadline_passes_stops_within_a_decode_step() {
    use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
    let url = replica("deadline", Duration::ZERO).await;
    let (cfg, tensors) = weights();
    let chunks = rlhf_proto::weights::encode(1, &tensors, &cfg, 0).unwrap();
    let mut client = PolicyGeneratorClient::new(rlhf_rpc::endpoint(&url).unwrap());
    client.update_weights(tokio_stream::iter(chunks)).await.unwrap();
    let cancelled = || rlhf_rpc::metrics::generator().cancelled.get();
    let before = cancelled();
    // 1,024 sequences of 1,500 new tokens and no stop token: far longer than the test.
    let mut request = tonic::Request::new(rlhf_proto::v1::GenerateRequest {
        request_id: "too-slow".into(),
        prompts: vec![rlhf_proto::v1::Prompt { prompt_id: "p".into(), text: String::new(), token_ids: vec![1, 2] }],
        sampling: Some(rlhf_proto::v1::SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 1_500,
            seed: 3,
            ..Default::default()
        }),
        samples_per_prompt: 1_024,
        min_policy_version: 0,
    });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.generate(request).await.unwrap_err();
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err}");
    while cancelled() == before {
        assert!(started.elapsed() < Duration::from_secs(20), "the replica kept decoding after the deadline");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("decoding stopped {:?} after the request was sent (deadline 300 ms)", started.elapsed());
}

/// A full replica sheds a request with RESOURCE_EXHAUSTED at once instead of queueing it, and
/// takes work again once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_sheds_load_with_resource_exhausted() {
    use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = GeneratorServiceConfig {
        id: "full".into(),
        stream_delay: Duration::from_millis(200),
        limits: policy_generator::Limits { max_concurrent: 1, ..Default::default() },
        security: Default::default(),
        device: candle_core::Device::Cpu,
    };
    tokio::spawn(policy_generator::run(config, listener, std::future::pending()));
    let (cfg, tensors) = weights();
    let chunks = rlhf_proto::weights::encode(1, &tensors, &cfg, 0).unwrap();
    let mut client = PolicyGeneratorClient::new(rlhf_rpc::endpoint(&url).unwrap());
    client.update_weights(tokio_stream::iter(chunks)).await.unwrap();
    let request = || rlhf_proto::request_to_proto(&requests(1)[0], 0);
    // The first request streams for about 400 ms and holds the replica's one slot.
    let mut first = client.generate(request()).await.unwrap().into_inner();
    let shed = client.generate(request()).await.expect_err("a second request while full");
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed}");
    let mut rollouts = 0;
    while first.message().await.unwrap().is_some() {
        rollouts += 1;
    }
    assert_eq!(rollouts, 2);
    let mut again = client.generate(request()).await.expect("room again").into_inner();
    while again.message().await.unwrap().is_some() {}

    // The fan-out, sending two requests at once to this one-slot replica, has one shed: it rests
    // the replica briefly and retries, without counting a failure or pushing the weights again.
    let config = FanoutConfig { in_flight_per_replica: 2, cooldown: Duration::from_millis(50), ..Default::default() };
    let mut fanout = Fanout::new(std::slice::from_ref(&url), config).unwrap();
    let chunks = Arc::new(rlhf_proto::weights::encode(2, &tensors, &cfg, 0).unwrap());
    assert_eq!(fanout.publish(2, chunks.clone()).await, 1);
    let mut delivered = 0;
    fanout.generate(&requests(2), 2, chunks, |_, rollouts, _| delivered += rollouts.len()).await.unwrap();
    assert_eq!(delivered, 4);
    let report = &fanout.report()[0];
    assert!(report.shed >= 1, "nothing was shed: {report:?}");
    assert_eq!((report.failures, report.serving), (0, Some(2)), "a full replica was counted as failed");
}

/// A resolver whose answer the test changes while a step runs, as DNS behind a headless Service
/// changes when pods come and go.
#[derive(Debug, Clone, Default)]
struct Changing(Arc<Mutex<Vec<String>>>);

impl Resolver for Changing {
    fn resolve(&self) -> Resolution<'_> {
        let answer = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(answer) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_mid_step_takes_work_and_one_that_leaves_loses_none() {
    // Each request (2 rollouts) takes about 200 ms, so the step is still going when the
    // answer changes.
    let first = replica("first", Duration::from_millis(100)).await;
    let joiner = replica("joiner", Duration::from_millis(100)).await;
    let (cfg, tensors) = weights();
    let chunks = Arc::new(rlhf_proto::weights::encode(3, &tensors, &cfg, 0).unwrap());
    let dns = Changing::default();
    *dns.0.lock().unwrap() = vec![first.clone()];
    let config = FanoutConfig {
        in_flight_per_replica: 1,
        deadline: Duration::from_secs(20),
        refresh_every: Duration::from_millis(20),
        ..Default::default()
    };
    let mut fanout = Fanout::with_resolver(Box::new(dns.clone()), config);
    // (generator, version, delivered after the answer changed)
    let mut delivered: Vec<(String, u64, bool)> = vec![];
    let mut ids = HashSet::new();
    let mut requests_done = 0;
    fanout
        .generate(&requests(8), 3, chunks, |_, rollouts, _| {
            let switched = requests_done >= 2;
            for r in rollouts {
                assert!(ids.insert(r.rollout_id.clone()), "{} delivered twice", r.rollout_id);
                delivered.push((r.generator_id, r.policy_version, switched));
            }
            requests_done += 1;
            if requests_done == 2 {
                // The first replica leaves the Service, a new one joins.
                *dns.0.lock().unwrap() = vec![joiner.clone()];
            }
        })
        .await
        .unwrap();
    assert_eq!(ids.len(), 16, "every rollout of every request, once");
    assert!(delivered.iter().all(|(_, v, _)| *v == 3), "the joiner got the current weights first: {delivered:?}");
    let from = |g: &str, after: bool| delivered.iter().filter(|(id, _, s)| id == g && *s == after).count();
    assert!(from("joiner", true) >= 10, "the new replica took the rest of the step: {delivered:?}");
    // At most the one request dispatched before the next look at the resolver.
    assert!(from("first", true) <= 2, "the replica that left got new work: {delivered:?}");
    let report = fanout.report();
    assert_eq!(report.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(), [joiner.as_str()], "{report:?}");
}

/// The learner's own RPCs: status from what the loop records, a checkpoint on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_checkpoint_requests_reach_the_training_loop() {
    use ppo_learner::{StatusBoard, StepStats};
    use rlhf_proto::v1::ppo_learner_client::PpoLearnerClient;
    use rlhf_proto::v1::{LearnerStatusRequest, SaveCheckpointRequest};

    let board = Arc::new(StatusBoard::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ppo_learner::run(board.clone(), listener, Default::default(), std::future::pending()));
    let mut client = PpoLearnerClient::new(rlhf_rpc::endpoint(&url).unwrap());

    board.record(&StepStats { step: 7, policy_version: 7, reward: 0.5, kl: 1.25, kl_coef: 0.2, ..Default::default() });
    let status = client.get_status(LearnerStatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.step, status.policy_version, status.last_mean_reward, status.last_kl), (7, 7, 0.5, 1.25));

    // The call waits until the loop has written a checkpoint.
    assert!(!board.checkpoint_wanted());
    let mut waiting = client.clone();
    let call = tokio::spawn(async move { waiting.save_checkpoint(SaveCheckpointRequest {}).await });
    while !board.checkpoint_wanted() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    board.checkpointed("runs/x/ppo", 8);
    let saved = call.await.unwrap().unwrap().into_inner();
    assert_eq!((saved.path.as_str(), saved.step), ("runs/x/ppo", 8));
    assert!(!board.checkpoint_wanted());
}
