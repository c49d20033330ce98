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

#[test]
fn a_queue_talks_to_redis_over_tls_and_only_with_the_certificates_redis_demands() {
    use rlhf_harness::certs::TestCa;
    use rlhf_queue::RedisTls;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue("redis").write(dir.path(), "redis");
    let client = ca.issue("learner").write(dir.path(), "learner");
    let redis = RedisServer::start_with_tls(&cert, &key, &ca_path, true).expect("a TLS redis-server");
    let with = |tls: Option<RedisTls>, url: &str| RedisQueueOptions {
        tls,
        outage_budget: Duration::from_secs(30),
        ..RedisQueueOptions::new(url, "tls")
    };
    let mutual = RedisTls { ca: ca_path.clone(), identity: Some(client) };
    let queue = RedisQueue::<String>::connect(with(Some(mutual.clone()), &redis.tls_url()))
        .expect("TLS with a client certificate");
    queue.push(vec!["sealed".into()]).unwrap();
    assert_eq!(queue.pop("worker", 1, Duration::ZERO).unwrap()[0].item, "sealed");

    // Refused at once, with a reason: no client certificate, plain text, or TLS asked of a
    // redis:// URL (which would silently drop the encryption).
    let no_identity = RedisTls { ca: ca_path, identity: None };
    let fast = Duration::from_secs(5);
    for (options, what) in [
        (with(Some(no_identity), &redis.tls_url()), "no client certificate"),
        (with(Some(mutual), &redis.url()), "certificates for a redis:// URL"),
    ] {
        let started = Instant::now();
        let err = RedisQueue::<String>::connect(options).expect_err(what).to_string();
        assert!(started.elapsed() < fast, "{what}: waited {:?}", started.elapsed());
        eprintln!("{what}: {err}");
    }
    let plain = RedisQueueOptions { outage_budget: Duration::from_secs(1), ..with(None, &redis.url()) };
    assert!(RedisQueue::<String>::connect(plain).is_err(), "plain text reached a TLS-only Redis");
}
