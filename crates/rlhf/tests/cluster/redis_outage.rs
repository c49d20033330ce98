//! Redis killed in the middle of PPO and started again: with its append-only file (nothing is
//! lost) and without persistence (everything is). Either way the run finishes with every step
//! trained once on its whole batch, and the scorer says NOT_SERVING while Redis is away.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use ppo_learner::{ClusterBackend, ClusterConfig, StatusBoard};
use rlhf_harness::{RedisServer, free_port};
use rlhf_pipeline::RunDir;
use rlhf_queue::Queue;
use tonic_health::pb::health_check_response::ServingStatus;

/// What one run with a Redis outage in the middle of PPO showed.
struct Outage {
    /// Health answers of the scorer while Redis was down, and after it came back.
    during: Vec<ServingStatus>,
    after: Option<ServingStatus>,
    repushed: u64,
    data_losses: u64,
}

fn ppo_steps_done(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.matches("\"stage\":\"ppo\"").count())
}

/// Runs PPO (6 steps) with one replica and a scorer process; kills Redis after step 2, keeps it
/// down for 1.5 s, starts it again, and waits for the run to end.
fn run_through_an_outage(mut redis: RedisServer, prefix: &str) -> Outage {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    let g1 = free_port();
    let _replica = generator("gen-a", g1, &[]);
    let service = runtime();
    let board = Arc::new(StatusBoard::default());
    let learner_port = free_port();
    let listener = service.block_on(tokio::net::TcpListener::bind(("127.0.0.1", learner_port))).unwrap();
    service.spawn(ppo_learner::run(board.clone(), listener, Default::default(), std::future::pending()));
    let scorer_port = free_port();
    let _scorer = scorer_on(scorer_port, &url(learner_port), &redis, prefix, &[]);

    let (raw, scored) = streams(&redis, prefix);
    let (raw, scored) = (Arc::new(raw), Arc::new(scored));
    let config = ClusterConfig { prompts_per_request: 4, ..Default::default() };
    let mut backend = ClusterBackend::new(&[url(g1)], raw.clone(), scored.clone(), config).unwrap();
    let learner = {
        let run = RunDir::open(run.root()).unwrap();
        std::thread::spawn(move || {
            let config = run.config().unwrap();
            let scorer = Arc::new(rlhf_pipeline::ppo::prepared_scorer(&run, &config).unwrap());
            let result = rlhf_pipeline::ppo::run_with(&run, &config, scorer, &mut backend, &board);
            (result, backend)
        })
    };

    let start = Instant::now();
    while ppo_steps_done(run.root()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(180), "PPO never reached step 2");
        assert!(!learner.is_finished(), "the learner ended before the outage");
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.kill();
    let rt = runtime();
    let down = Instant::now();
    let mut during = vec![];
    while down.elapsed() < Duration::from_millis(1_500) {
        during.extend(health(&rt, scorer_port));
        std::thread::sleep(Duration::from_millis(100));
    }
    redis.restart().unwrap();

    let (result, backend) = learner.join().unwrap();
    let result = result.expect("PPO finishes despite the outage");
    assert_eq!(result.steps, 6);
    // One record per step, each trained on its whole batch of 16, none twice.
    let steps: Vec<u64> = ppo_records(run.root()).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=6).collect::<Vec<u64>>());
    assert_every_step_complete(run.root(), 6, 16);
    assert_eq!(backend.counters().rescored, 0);
    // The scorer is back to SERVING once it reaches Redis again.
    let back = Instant::now();
    let mut after = health(&rt, scorer_port);
    while after != Some(ServingStatus::Serving) && back.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        after = health(&rt, scorer_port);
    }
    Outage {
        during,
        after,
        repushed: backend.counters().repushed,
        data_losses: raw.health().groups_recreated + scored.health().groups_recreated,
    }
}

#[test]
fn redis_restarted_with_its_data_during_ppo_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outage = run_through_an_outage(RedisServer::start_with_aof(dir.path()).unwrap(), "aof");
    assert!(outage.during.contains(&ServingStatus::NotServing), "health while Redis was down: {:?}", outage.during);
    assert_eq!(outage.after, Some(ServingStatus::Serving));
    // Nothing was lost, so nothing was pushed again.
    assert_eq!((outage.data_losses, outage.repushed), (0, 0));
}

#[test]
fn redis_restarted_without_its_data_during_ppo_has_the_lost_rollouts_pushed_again() {
    let outage = run_through_an_outage(RedisServer::start().unwrap(), "diskless");
    assert!(outage.during.contains(&ServingStatus::NotServing), "health while Redis was down: {:?}", outage.during);
    assert_eq!(outage.after, Some(ServingStatus::Serving));
    // The learner noticed the loss and pushed the rollouts of its step again.
    assert!(outage.data_losses >= 1, "the loss went unnoticed");
    assert!(outage.repushed >= 1, "nothing was pushed again after the loss");
}
