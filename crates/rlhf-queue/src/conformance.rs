//! The behaviour every [`Queue`] implementation must show; the in-process queue and the Redis
//! stream both run it (`tests/conformance.rs`), so the one-machine mode cannot drift from the
//! distributed one.
//!
//! Each check takes a factory `make(name, max_deliveries)` that returns a fresh, empty queue.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::{Queue, Traced};

const NOW: Duration = Duration::ZERO;

fn items(deliveries: &[crate::Delivery<String>]) -> Vec<&str> {
    deliveries.iter().map(|d| d.item.as_str()).collect()
}

fn ids(deliveries: &[crate::Delivery<String>]) -> Vec<String> {
    deliveries.iter().map(|d| d.id.clone()).collect()
}

/// Entries stay pending until acknowledged; a live consumer takes over a dead one's entries,
/// which count a second delivery; acknowledged entries never come back.
pub fn at_least_once<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("at-least-once", 5);
    q.push(vec!["a".into(), "b".into(), "c".into()]).unwrap();
    let first = q.pop("worker-1", 2, NOW).unwrap();
    assert_eq!(items(&first), ["a", "b"]);
    assert!(first.iter().all(|d| d.deliveries == 1));
    assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (1, 2));
    q.ack(&ids(&first[..1])).unwrap();
    // worker-1 dies holding "b": worker-2 takes it over.
    let taken = q.claim_stale("worker-2", NOW, 10).unwrap();
    assert_eq!(taken.iter().map(|d| (d.item.as_str(), d.deliveries)).collect::<Vec<_>>(), [("b", 2)]);
    let rest = q.pop("worker-2", 10, NOW).unwrap();
    assert_eq!(items(&rest), ["c"]);
    q.ack(&ids(&taken)).unwrap();
    q.ack(&ids(&rest)).unwrap();
    assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (0, 0));
    assert!(q.pop("worker-2", 10, NOW).unwrap().is_empty());
    assert!(q.claim_stale("worker-3", NOW, 10).unwrap().is_empty());
}

/// Entries held for less than `min_idle` are not taken from their consumer.
pub fn claims_only_stale_entries<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("min-idle", 5);
    q.push(vec!["x".into()]).unwrap();
    let held = q.pop("worker-1", 1, NOW).unwrap();
    assert!(q.claim_stale("worker-2", Duration::from_secs(60), 10).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(30));
    let taken = q.claim_stale("worker-2", Duration::from_millis(20), 10).unwrap();
    assert_eq!(ids(&taken), ids(&held));
}

/// A worker that keeps its entries alive keeps them, however long it works; the entries it
/// stopped keeping alive are taken over, and after that it no longer holds them.
pub fn kept_alive_entries_are_not_taken_over<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("keep-alive", 5);
    q.push(vec!["x".into(), "y".into()]).unwrap();
    let held = q.pop("worker-1", 2, NOW).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(q.keep_alive("worker-1", &ids(&held[..1])).unwrap(), 1);
    // Only "y" has been idle for 200 ms: "x" was touched a moment ago.
    let taken = q.claim_stale("worker-2", Duration::from_millis(200), 10).unwrap();
    assert_eq!(items(&taken), ["y"]);
    assert_eq!(taken[0].deliveries, 2, "keep-alive must not count as a delivery");
    assert_eq!(q.keep_alive("worker-1", &ids(&held)).unwrap(), 1, "worker-1 took y back");
    assert_eq!(q.own_pending("worker-2", 10).unwrap().len(), 1);
}

/// An entry that keeps failing moves to the dead-letter list after `max_deliveries` and stops
/// being delivered; the others go on.
pub fn dead_letters_after_max_deliveries<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("poison", 2);
    q.push(vec!["poison".into(), "fine".into()]).unwrap();
    let first = q.pop("worker-1", 1, NOW).unwrap();
    assert_eq!(items(&first), ["poison"]);
    let second = q.claim_stale("worker-2", NOW, 10).unwrap();
    assert_eq!(second.iter().map(|d| d.deliveries).collect::<Vec<_>>(), [2]);
    // A third delivery would pass the limit of 2.
    assert!(q.claim_stale("worker-3", NOW, 10).unwrap().is_empty());
    assert_eq!((q.dead_letters().unwrap(), q.pending().unwrap()), (1, 0));
    assert_eq!(items(&q.pop("worker-3", 10, NOW).unwrap()), ["fine"]);
}

/// Acknowledging frees storage, but never of an entry that is pending or not yet delivered.
pub fn trimming_keeps_unacknowledged_entries<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("trim", 5);
    q.push((0..50).map(|i| format!("item-{i}")).collect()).unwrap();
    let batch = q.pop("worker-1", 20, NOW).unwrap();
    // Acknowledge all but two entries in the middle of the batch; 30 were never delivered.
    let keep: BTreeSet<usize> = [5, 12].into();
    let acked: Vec<String> =
        batch.iter().enumerate().filter(|(i, _)| !keep.contains(i)).map(|(_, d)| d.id.clone()).collect();
    q.ack(&acked).unwrap();
    assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (30, 2));
    assert!(q.stored().unwrap() >= 32, "an un-acknowledged entry was trimmed");
    // The held entries are still there to take over, and the undelivered ones to read.
    let taken = q.claim_stale("worker-2", NOW, 10).unwrap();
    assert_eq!(items(&taken), ["item-5", "item-12"]);
    q.ack(&ids(&taken)).unwrap();
    let rest = q.pop("worker-2", 100, NOW).unwrap();
    assert_eq!(rest.len(), 30);
    assert_eq!(rest[0].item, "item-20");
    q.ack(&ids(&rest)).unwrap();
    assert_eq!(q.stored().unwrap(), 0, "acknowledged entries are not freed");
}

/// A pop on an empty queue waits for a push from another thread.
pub fn pop_waits_for_a_push<Q: Queue<String> + 'static>(make: impl Fn(&str, u32) -> Q) {
    let q = std::sync::Arc::new(make("wait", 5));
    let producer = {
        let q = q.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q.push(vec!["late".into()]).unwrap();
        })
    };
    let got = q.pop("worker-1", 1, Duration::from_secs(20)).unwrap();
    producer.join().unwrap();
    assert_eq!(items(&got), ["late"]);
}

/// The trace context travels with the entry.
pub fn carries_trace_context<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("traced", 5);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
    q.push_traced(vec![Traced { item: "x".into(), traceparent: Some(parent.clone()) }, Traced::untraced("y".into())])
        .unwrap();
    let got = q.pop("worker-1", 2, NOW).unwrap();
    assert_eq!(got.iter().map(|d| d.traceparent.clone()).collect::<Vec<_>>(), [Some(parent), None]);
}

/// A consumer restarted under its own name gets back what it held, at once and only that.
pub fn own_pending_entries_come_back_to_their_consumer<Q: Queue<String>>(make: impl Fn(&str, u32) -> Q) {
    let q = make("own-pending", 5);
    q.push(vec!["a".into(), "b".into(), "c".into(), "d".into()]).unwrap();
    let held = q.pop("scorer-1", 2, NOW).unwrap();
    let other = q.pop("scorer-2", 1, NOW).unwrap();
    let back = q.own_pending("scorer-1", 10).unwrap();
    assert_eq!(items(&back), ["a", "b"]);
    assert_eq!(ids(&back), ids(&held));
    assert!(back.iter().all(|d| d.deliveries >= 1));
    assert!(q.own_pending("scorer-3", 10).unwrap().is_empty(), "nobody else's entries");
    assert_eq!(items(&q.own_pending("scorer-2", 10).unwrap()), ["c"]);
    q.ack(&ids(&back)).unwrap();
    q.ack(&ids(&other)).unwrap();
    assert!(q.own_pending("scorer-1", 10).unwrap().is_empty());
    assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (1, 0));
}

/// Runs every check above.
pub fn suite<Q: Queue<String> + 'static>(make: impl Fn(&str, u32) -> Q) {
    at_least_once(&make);
    claims_only_stale_entries(&make);
    kept_alive_entries_are_not_taken_over(&make);
    dead_letters_after_max_deliveries(&make);
    trimming_keeps_unacknowledged_entries(&make);
    pop_waits_for_a_push(&make);
    carries_trace_context(&make);
    own_pending_entries_come_back_to_their_consumer(&make);
}
