//! Both queue implementations against the one conformance suite; Redis on a private server.

use rlhf_harness::RedisServer;
use rlhf_queue::{InProcessQueue, Queue, RedisQueue, RedisQueueOptions, conformance};

#[test]
fn in_process_queue_conforms() {
    conformance::suite(InProcessQueue::<String>::with_max_deliveries);
}

#[test]
fn redis_queue_conforms() {
    let redis = RedisServer::start().expect("start a private redis-server");
    conformance::suite(|name, max| {
        let mut options = RedisQueueOptions::new(&redis.url(), name);
        options.max_deliveries = max;
        RedisQueue::<String>::connect(options).expect("connect")
    });
}

#[test]
fn redis_entries_that_do_not_parse_go_to_the_dead_letter_stream() {
    let redis = RedisServer::start().expect("start a private redis-server");
    let options = RedisQueueOptions::new(&redis.url(), "typed");
    // Someone writes text into a stream of numbers.
    let writer = RedisQueue::<String>::connect(options.clone()).unwrap();
    writer.push(vec!["not a number".into()]).unwrap();
    let reader = RedisQueue::<u64>::connect(options).unwrap();
    reader.push(vec![7]).unwrap();
    // And bytes that are not even UTF-8.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let garbage: &[u8] = &[0xff, 0xfe, b'{', 0x00, 0x80];
    let _: String = redis::cmd("XADD").arg("typed").arg("*").arg("data").arg(garbage).query(&mut c).unwrap();
    let got = reader.pop("worker-1", 10, std::time::Duration::ZERO).unwrap();
    assert_eq!(got.iter().map(|d| d.item).collect::<Vec<_>>(), [7]);
    assert_eq!((reader.dead_letters().unwrap(), reader.pending().unwrap()), (2, 1));
    // The dead letters keep the original bytes.
    let dead: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg("typed:dead").arg("-").arg("+").query(&mut c).unwrap();
    let data: Vec<Vec<u8>> = dead.ids.iter().map(|e| e.get::<Vec<u8>>("data").unwrap()).collect();
    assert_eq!(data, [serde_json::to_vec("not a number").unwrap(), garbage.to_vec()]);
    assert!(dead.ids.iter().all(|e| e.get::<String>("reason").is_some_and(|r| !r.is_empty())));
}

#[test]
fn redis_entries_over_the_size_cap_are_refused_on_push_and_buried_on_read() {
    let redis = RedisServer::start().expect("start a private redis-server");
    let small = RedisQueueOptions { max_entry_bytes: 64, ..RedisQueueOptions::new(&redis.url(), "capped") };
    let capped = RedisQueue::<String>::connect(small.clone()).unwrap();
    // A push with one oversize item is refused whole: nothing is written.
    let err = capped.push(vec!["ok".into(), "x".repeat(100)]).unwrap_err().to_string();
    assert!(err.contains("cap"), "{err}");
    assert_eq!((capped.ready().unwrap(), capped.stored().unwrap()), (0, 0));
    // One that another writer (with a larger cap) put there goes to the dead letters unread.
    let roomy = RedisQueue::<String>::connect(RedisQueueOptions::new(&redis.url(), "capped")).unwrap();
    roomy.push(vec!["x".repeat(100), "fits".into()]).unwrap();
    let got = capped.pop("worker-1", 10, std::time::Duration::ZERO).unwrap();
    assert_eq!(got.iter().map(|d| d.item.as_str()).collect::<Vec<_>>(), ["fits"]);
    assert_eq!(capped.dead_letters().unwrap(), 1);
}

#[test]
fn redis_queue_survives_a_server_restart_of_its_connection() {
    let redis = RedisServer::start().expect("start a private redis-server");
    let q = RedisQueue::<String>::connect(RedisQueueOptions::new(&redis.url(), "reconnect")).unwrap();
    q.push(vec!["a".into()]).unwrap();
    // Drop every client connection on the server side; the queue reconnects on its next call.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes").query(&mut c).unwrap();
    assert_eq!(q.pop("worker-1", 1, std::time::Duration::ZERO).unwrap().len(), 1);
}
