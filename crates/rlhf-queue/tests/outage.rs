//! A Redis queue rides out Redis going away: restarted with its data, restarted without it, and
//! gone for longer than the outage budget. Each test runs its own redis-server and kills it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rlhf_harness::RedisServer;
use rlhf_queue::{Queue, RedisQueue, RedisQueueOptions};

/// Polls `queue`'s health on another thread until `done`; true if it ever saw Redis unreachable.
fn watch_health(queue: Arc<RedisQueue<String>>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let mut saw_down = false;
        while !done.load(Ordering::SeqCst) {
            saw_down |= !queue.health().reachable;
            std::thread::sleep(Duration::from_millis(10));
        }
        saw_down
    })
}

#[test]
fn a_redis_restart_with_its_data_is_waited_out_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("rlhf-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = RedisServer::start_with_aof(&dir).expect("start a private redis-server");
    let queue = Arc::new(RedisQueue::<String>::connect(RedisQueueOptions::new(&redis.url(), "aof")).unwrap());
    queue.push(vec!["a".into(), "b".into(), "c".into()]).unwrap();
    let held = queue.pop("worker", 1, Duration::ZERO).unwrap();
    assert_eq!(held[0].item, "a");

    redis.kill();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_health(queue.clone(), done.clone());
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        redis.restart().expect("restart redis");
        redis
    });
    // Issued while Redis is down: it waits for the restart instead of failing.
    let started = Instant::now();
    queue.push(vec!["d".into()]).expect("the push waits out the restart");
    let waited = started.elapsed();
    let _redis = restarter.join().unwrap();
    done.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap(), "health never said Redis was unreachable");
    assert!(waited >= Duration::from_secs(1), "the push returned after {waited:?}, before Redis was back");

    // Nothing lost: the held entry is still this worker's, the rest still ready, none twice.
    let own = queue.own_pending("worker", 10).unwrap();
    assert_eq!(own.iter().map(|d| d.item.as_str()).collect::<Vec<_>>(), ["a"]);
    let rest = queue.pop("worker", 10, Duration::ZERO).unwrap();
    assert_eq!(rest.iter().map(|d| d.item.as_str()).collect::<Vec<_>>(), ["b", "c", "d"]);
    let health = queue.health();
    assert!(health.reachable);
    // At least the one outage (a connection that meets Redis mid-restart may count a second).
    assert!(health.outages >= 1, "{health:?}");
    assert_eq!(health.groups_recreated, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_redis_that_lost_its_data_gets_the_group_back_and_the_loss_is_counted() {
    let mut redis = RedisServer::start().expect("start a private redis-server");
    let queue = RedisQueue::<String>::connect(RedisQueueOptions::new(&redis.url(), "lost")).unwrap();
    queue.push(vec!["before".into()]).unwrap();
    redis.kill();
    redis.restart().unwrap();

    // A producer writes first: the stream exists again, without its group.
    queue.push(vec!["after".into()]).unwrap();
    let got = queue.pop("worker", 10, Duration::ZERO).expect("the group is created again");
    assert_eq!(got.iter().map(|d| d.item.as_str()).collect::<Vec<_>>(), ["after"]);
    let health = queue.health();
    // Redis was back before the queue noticed, so there was no outage to wait out, only a loss.
    assert_eq!((health.reachable, health.outages, health.groups_recreated), (true, 0, 1));
    // And it works as before.
    queue.ack(&[got[0].id.clone()]).unwrap();
    assert_eq!((queue.pending().unwrap(), queue.stored().unwrap()), (0, 0));
}

#[test]
fn redis_gone_for_longer_than_the_budget_is_a_clear_error() {
    let mut redis = RedisServer::start().expect("start a private redis-server");
    let options =
        RedisQueueOptions { outage_budget: Duration::from_secs(1), ..RedisQueueOptions::new(&redis.url(), "gone") };
    let queue = RedisQueue::<String>::connect(options).unwrap();
    redis.kill();
    let started = Instant::now();
    let err = queue.pop("worker", 1, Duration::from_millis(100)).expect_err("Redis never comes back").to_string();
    let waited = started.elapsed();
    assert!(err.contains("unreachable") && err.contains("budget"), "{err}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "gave up after {waited:?}");
    assert!(!queue.health().reachable);
}
