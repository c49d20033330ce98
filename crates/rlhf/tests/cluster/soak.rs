//! The soak run (`make soak`, not part of `make test`): 63 PPO steps of 16 rollouts (1,008
//! trained) through two replicas, the scorer and Redis as processes, while every kind of process
//! is killed or restarted in turn. At the end every step was trained exactly once on its whole
//! batch, nothing is left pending or dead-lettered, and the time each disruption cost is printed.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_queue::Queue;

const STEPS: usize = 63;

fn steps_done(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.matches("\"stage\":\"ppo\"").count())
}

/// The processes of the run, each restartable with its command line.
struct Cluster {
    redis: RedisServer,
    generators: [Child; 2],
    ports: [u16; 2],
    scorer: Child,
    learner: Child,
}

#[test]
#[ignore = "the soak run: `make soak`"]
fn a_thousand_rollouts_through_kills_of_every_process_and_a_redis_restart() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepared_run(dir.path());
    let mut config = run.config().unwrap();
    config.ppo.steps = STEPS;
    config.ppo.eval_every = 21;
    std::fs::write(run.path("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let aof = dir.path().join("redis");
    std::fs::create_dir_all(&aof).unwrap();
    let redis = RedisServer::start_with_aof(&aof).unwrap();
    let ports = [free_port(), free_port()];
    let generators = [generator("gen-a", ports[0], &[]), generator("gen-b", ports[1], &[])];
    let learner_port = free_port();
    let scorer = scorer_with(&url(learner_port), &redis, "soak", &["--consumer", "scorer-soak"]);
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
        "soak",
        "--generators",
        &format!("{},{}", url(ports[0]), url(ports[1])),
        "--prompts-per-request",
        "4",
    ]);
    let learner = Child::spawn("learner", bin(), &learner_args, &QUIET).unwrap();
    let mut cluster = Cluster { redis, generators, ports, scorer, learner };
    let started = Instant::now();

    // (after this many steps, what happens)
    type Disruption = (usize, &'static str, fn(&mut Cluster));
    let disruptions: [Disruption; 6] = [
        (8, "replica B killed, back after 1 s", |c| {
            c.generators[1].kill();
            std::thread::sleep(Duration::from_secs(1));
            c.generators[1].start().unwrap();
            wait_for_port(c.ports[1], Duration::from_secs(30)).unwrap();
        }),
        (16, "scorer killed, restarted under its name", |c| {
            c.scorer.kill();
            c.scorer.start().unwrap();
        }),
        (24, "Redis killed, back after 2 s (AOF)", |c| {
            c.redis.kill();
            std::thread::sleep(Duration::from_secs(2));
            c.redis.restart().unwrap();
        }),
        (32, "learner killed, restarted (resumes from its checkpoint)", |c| {
            c.learner.kill();
            c.learner.start().unwrap();
        }),
        (44, "replica A drained (SIGTERM) and restarted", |c| {
            c.generators[0].terminate();
            c.generators[0].wait_timeout(Duration::from_secs(30));
            c.generators[0].start().unwrap();
            wait_for_port(c.ports[0], Duration::from_secs(30)).unwrap();
        }),
        (52, "scorer and Redis killed together, both back after 1 s", |c| {
            c.scorer.kill();
            c.redis.kill();
            std::thread::sleep(Duration::from_secs(1));
            c.redis.restart().unwrap();
            c.scorer.start().unwrap();
        }),
    ];
    let mut report = vec![];
    for (after, what, disrupt) in disruptions {
        while steps_done(run.root()) < after {
            assert!(started.elapsed() < Duration::from_secs(1800), "stuck before step {after}");
            assert!(cluster.learner.is_running(), "the learner ended before step {after}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = Instant::now();
        disrupt(&mut cluster);
        // Recovered: a step trained after the disruption that had not been trained before.
        let before = steps_done(run.root()).max(after);
        while steps_done(run.root()) <= before && cluster.learner.is_running() {
            assert!(at.elapsed() < Duration::from_secs(600), "no step after: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
        report.push((after, what, at.elapsed()));
    }
    let exit = cluster.learner.wait_timeout(Duration::from_secs(1800)).expect("the learner finishes");
    assert!(exit.success(), "{exit:?}");
    let wall = started.elapsed();

    let records = ppo_records(run.root());
    let steps: Vec<u64> = records.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS as u64).collect::<Vec<u64>>(), "every step once");
    assert!(records.iter().all(|r| r["rollouts"] == 16), "a step trained on part of its batch");
    let (raw, scored) = streams(&cluster.redis, "soak");
    assert_eq!((raw.pending().unwrap(), scored.pending().unwrap()), (0, 0), "entries left pending");
    assert_eq!((raw.dead_letters().unwrap(), scored.dead_letters().unwrap()), (0, 0), "dead letters");
    let skipped: u64 = records.iter().map(|r| r["duplicates_skipped"].as_u64().unwrap_or(0)).sum();

    eprintln!(
        "\nsoak: {} steps, {} rollouts trained, {skipped} duplicates skipped, {wall:.1?} wall",
        STEPS,
        STEPS * 16
    );
    eprintln!("| after step | disruption | until the next new step |");
    eprintln!("|---|---|---|");
    for (after, what, took) in report {
        eprintln!("| {after} | {what} | {took:.1?} |");
    }
}
