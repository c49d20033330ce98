//! Queues between the stages: raw rollouts from generators to the scorer, scored rollouts from
//! the scorer to the learner.
//!
//! Delivery is at least once: [`Queue::pop`] hands entries to a consumer and keeps them pending
//! until [`Queue::ack`]; [`Queue::claim_stale`] lets a live consumer take over the entries that
//! another one held too long (it died). Consumers therefore deduplicate (the learner does, by
//! rollout id). An entry delivered more than `max_deliveries` times is poison: it moves to a
//! dead-letter list instead of crashing consumers forever. This is the contract of Redis Streams
//! consumer groups (XREADGROUP, XACK, XAUTOCLAIM), and both implementations pass one suite,
//! [`conformance`].
//!
//! # Layout
//! - [`Queue`]: the trait, with [`Delivery`] and [`Traced`] (an item with its W3C trace context).
//! - [`InProcessQueue`]: the embedded default, a mutex-guarded deque.
//! - [`RedisQueue`]: a Redis stream with one consumer group. **Invariant:** no other crate of
//!   the workspace talks to Redis.
//! - [`QueueHealth`]: whether the backend is reachable, and what outages and data losses the
//!   queue rode out (`outage`: the backoff and what counts as Redis being away).

mod in_process;
mod outage;
mod redis_streams;

pub mod conformance;

use std::time::Duration;

pub use in_process::InProcessQueue;
pub use outage::{DEFAULT_OUTAGE_BUDGET, QueueHealth};
pub use redis_streams::{RedisQueue, RedisQueueOptions, RedisTls, parse_entry};

/// Identifies one delivered entry for [`Queue::ack`] (a stream id, `<ms>-<seq>`, in Redis).
pub type EntryId = String;

/// Deliveries after which an entry moves to the dead-letter list, unless configured otherwise.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// An item with the W3C `traceparent` of the span that produced it, so that the consumer's span
/// joins the producer's trace across the queue hop.
#[derive(Debug, Clone, PartialEq)]
pub struct Traced<T> {
    pub item: T,
    pub traceparent: Option<String>,
}

impl<T> Traced<T> {
    pub fn untraced(item: T) -> Self {
        Traced { item, traceparent: None }
    }
}

/// An entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    pub id: EntryId,
    /// How many times this entry has been handed out, this time included.
    pub deliveries: u32,
    pub item: T,
    pub traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue {queue}: {message}")]
    Backend { queue: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A work queue with acknowledgements.
pub trait Queue<T>: Send + Sync {
    /// Appends items, each with its trace context.
    fn push_traced(&self, items: Vec<Traced<T>>) -> Result<()>;

    /// Appends items that carry no trace context.
    fn push(&self, items: Vec<T>) -> Result<()> {
        self.push_traced(items.into_iter().map(Traced::untraced).collect())
    }

    /// Up to `max` entries never handed out before, now pending for `consumer`. Waits up to
    /// `wait` for the first one when none is ready.
    fn pop(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>>;

    /// Marks entries as done: they are never delivered again, and the storage they held is freed
    /// (never the storage of an entry still pending or not yet delivered).
    fn ack(&self, ids: &[EntryId]) -> Result<()>;

    /// Up to `max` entries pending with `consumer` itself (`XREADGROUP … 0`): what a consumer
    /// restarted under its own name was working on when it died, taken back at once instead of
    /// after a claim threshold. Entries past the delivery limit go to the dead-letter list.
    fn own_pending(&self, consumer: &str, max: usize) -> Result<Vec<Delivery<T>>>;

    /// Takes over up to `max` entries that have been pending, with any consumer, for at least
    /// `min_idle`: their holder died or hangs. Entries that would exceed the delivery limit go to
    /// the dead-letter list instead and are not returned.
    fn claim_stale(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<T>>>;

    /// Marks those of `ids` still pending with `consumer` as just delivered (idle time zero, the
    /// delivery count unchanged), so that a live worker's long job is not taken over by
    /// [`Queue::claim_stale`]; returns how many it still holds (the others were taken over).
    fn keep_alive(&self, consumer: &str, ids: &[EntryId]) -> Result<usize>;

    /// Entries waiting to be handed out.
    fn ready(&self) -> Result<usize>;
    /// Entries handed out and not yet acknowledged.
    fn pending(&self) -> Result<usize>;
    /// Entries still stored: with correct trimming, exactly `ready + pending`.
    fn stored(&self) -> Result<usize>;
    /// Entries moved to the dead-letter list.
    fn dead_letters(&self) -> Result<usize>;

    /// Whether the backend is reachable now, and what outages and data losses it has seen.
    /// Never blocks: a health probe asks while a worker waits out an outage.
    fn health(&self) -> QueueHealth {
        QueueHealth::always_up()
    }
}
