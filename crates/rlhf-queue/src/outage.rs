//! How a Redis queue rides out an outage: which errors mean "Redis is away" rather than "this
//! command is wrong", the jittered exponential backoff between attempts, and the state other
//! threads read (health probes, `/metrics`) while a worker waits.
//!
//! A restart of Redis takes about a second; Kubernetes moving its pod, tens of seconds. Dying on
//! the first refused connection turned either into a lost training run, so every command is
//! retried until the outage has lasted its budget, and only then does the caller see an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a queue waits for Redis to come back before its caller sees the error.
pub const DEFAULT_OUTAGE_BUDGET: Duration = Duration::from_secs(180);

/// First pause after a failure; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What a queue's link to its backend looks like right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueHealth {
    /// False while the backend cannot be reached and the queue is waiting for it.
    pub reachable: bool,
    /// How long the current outage has lasted (zero while reachable).
    pub unreachable_for: Duration,
    /// Outages ridden out or under way since the queue was made.
    pub outages: u64,
    /// Times the consumer group was missing and had to be created again: the backend lost its
    /// data (Redis restarted without persistence), so entries pushed before are gone.
    pub groups_recreated: u64,
}

impl QueueHealth {
    /// A backend that never goes away (the in-process queue).
    pub fn always_up() -> Self {
        QueueHealth { reachable: true, unreachable_for: Duration::ZERO, outages: 0, groups_recreated: 0 }
    }
}

/// True when `e` says the server is away or restarting (worth waiting for), false when the
/// command itself failed, or the credentials did (retrying would fail again).
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || tls_refusal(e);
    !refused
        && (e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
            || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN")))
}

/// Whether `e` is TLS refusing this client or its peer: a certificate to fix, not an outage to
/// wait out, though redis-rs reports it as an I/O error carrying only rustls's message.
pub(crate) fn tls_refusal(e: &redis::RedisError) -> bool {
    let said = e.to_string();
    ["received fatal alert", "invalid peer certificate", "peer is incompatible", "peer misbehaved"]
        .iter()
        .any(|rustls_says| said.contains(rustls_says))
}

/// The outage state one queue shares between its connections and whoever asks for its health.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// Microseconds since the Unix epoch when the current outage began; 0 while reachable.
    down_since_us: AtomicU64,
    outages: AtomicU64,
    groups_recreated: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}

impl Link {
    /// A command went through: any outage is over.
    pub(crate) fn up(&self, stream: &str) {
        let since = self.down_since_us.swap(0, Ordering::SeqCst);
        if since != 0 {
            let lasted = Duration::from_micros(now_us().saturating_sub(since));
            tracing::warn!(stream, ?lasted, "Redis is reachable again");
        }
    }

    /// A command failed with a transient error; returns how long the outage has lasted.
    pub(crate) fn down(&self, stream: &str, error: &redis::RedisError) -> Duration {
        let now = now_us();
        match self.down_since_us.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                self.outages.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(stream, %error, "Redis is unreachable; retrying with backoff");
                Duration::ZERO
            }
            Err(since) => Duration::from_micros(now.saturating_sub(since)),
        }
    }

    pub(crate) fn group_recreated(&self) {
        self.groups_recreated.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn health(&self) -> QueueHealth {
        let since = self.down_since_us.load(Ordering::SeqCst);
        QueueHealth {
            reachable: since == 0,
            unreachable_for: if since == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(now_us().saturating_sub(since))
            },
            outages: self.outages.load(Ordering::SeqCst),
            groups_recreated: self.groups_recreated.load(Ordering::SeqCst),
        }
    }
}

/// Pauses between attempts: exponential from [`FIRST_PAUSE`] to [`MAX_PAUSE`], each drawn
/// uniformly from its upper half so that many workers cut off together do not return together.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: FIRST_PAUSE }
    }

    /// Sleeps for the next pause, but never past `deadline`.
    pub(crate) fn pause(&mut self, deadline: Instant) {
        let pause = self.next.mul_f64(rand::random_range(0.5..=1.0));
        self.next = (self.next * 2).min(MAX_PAUSE);
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stay_in_their_upper_half() {
        let mut backoff = Backoff::new();
        let mut bounds = vec![backoff.next];
        for _ in 0..7 {
            // A deadline already passed: no sleep, but the next pause still grows.
            backoff.pause(Instant::now());
            bounds.push(backoff.next);
        }
        let ms: Vec<u128> = bounds.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        let mut backoff = Backoff::new();
        let started = Instant::now();
        backoff.pause(started + Duration::from_secs(1));
        let slept = started.elapsed();
        assert!(slept >= Duration::from_millis(25), "{slept:?}");
    }

    #[test]
    fn an_outage_is_counted_once_and_ends_when_a_command_goes_through() {
        let link = Link::default();
        let error = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_transient(&error));
        assert_eq!(link.down("s", &error), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(20));
        assert!(link.down("s", &error) >= Duration::from_millis(20));
        let during = link.health();
        assert!(!during.reachable && during.outages == 1 && during.unreachable_for >= Duration::from_millis(20));
        link.up("s");
        assert_eq!(link.health(), QueueHealth { outages: 1, ..QueueHealth::always_up() });
    }
}
