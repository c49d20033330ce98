//! A Redis that requires an ACL user: the queue connects with the user and password in its URL,
//! and without them it fails at once with Redis's own reason, not after an outage budget.

use std::time::{Duration, Instant};

use rlhf_harness::RedisServer;
use rlhf_queue::{Queue, RedisQueue, RedisQueueOptions};

#[test]
fn a_queue_connects_as_an_acl_user_and_fails_fast_without_credentials() {
    let redis = RedisServer::start_with_user("rlhf", "pw-s3cret").expect("start a private redis-server");
    let with_user = format!("redis://rlhf:pw-s3cret@127.0.0.1:{}/", redis.port());
    let queue = RedisQueue::<String>::connect(RedisQueueOptions::new(&with_user, "auth")).expect("connect as rlhf");
    queue.push(vec!["x".into()]).unwrap();
    assert_eq!(queue.pop("worker", 1, Duration::ZERO).unwrap()[0].item, "x");

    for url in [redis.url(), format!("redis://rlhf:wrong@127.0.0.1:{}/", redis.port())] {
        let started = Instant::now();
        let err = RedisQueue::<String>::connect(RedisQueueOptions::new(&url, "auth")).expect_err(&url).to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: waited {:?} for a refusal", started.elapsed());
        assert!(err.contains("NOAUTH") || err.contains("WRONGPASS") || err.contains("auth"), "{url}: {err}");
    }
}
