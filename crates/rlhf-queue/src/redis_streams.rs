//! A queue on a Redis stream with one consumer group.
//!
//! - push: `XADD` with the item as JSON in field `data` and its trace context in `traceparent`.
//! - pop: `XREADGROUP … >`; ack: `XACK`, then `XTRIM MINID` to the oldest entry still pending
//!   (or the first never delivered). A plain `MAXLEN` would delete un-acknowledged entries.
//! - keep_alive: a script that `XCLAIM`s (JUSTID) the consumer's own entries, to reset their idle
//!   time without taking over anyone else's.
//! - claim_stale: `XAUTOCLAIM`, with the delivery counts read back from `XPENDING`; an entry past
//!   the delivery limit, or one that does not parse, goes to `<stream>:dead` and is acknowledged.
//!
//! The connection is synchronous: every caller of a queue is a worker thread that blocks on it
//! anyway, and it keeps tokio out of this crate. When Redis is away, every command is retried
//! with backoff until the outage budget is spent ([`crate::outage`]); when the consumer group
//! is missing (Redis came back without its data) it is created again, loudly, and counted in
//! [`QueueHealth::groups_recreated`] so that the consumer can decide what the loss means.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamPendingReply, StreamRangeReply, StreamReadOptions, StreamReadReply, StreamTrimOptions, StreamTrimmingMode,
};
use redis::{Commands, Connection, RedisResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::outage::{Backoff, DEFAULT_OUTAGE_BUDGET, Link, QueueHealth, is_transient};
use crate::{DEFAULT_MAX_DELIVERIES, Delivery, EntryId, Error, Queue, Result, Traced};

/// XAUTOCLAIM and XPENDING scan in pages of this size.
const PAGE: usize = 1_000;

/// Resets the idle time of the entries (`ARGV[3..]`) still pending with the consumer
/// (`ARGV[2]`), and only those: XCLAIM alone would also take back an entry another consumer has
/// claimed meanwhile. JUSTID leaves the delivery count alone. Atomic, as every script is.
const KEEP_ALIVE: &str = r"
local held = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held = held + 1
  end
end
return held
";

/// A connection attempt to a host that does not answer gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A command with no answer after this long (beyond its own blocking time) counts as an
/// outage: a frozen Redis must not hang a worker forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the stream lives and how it treats poison entries.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisQueueOptions {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub max_deliveries: u32,
    /// Largest entry (its serialised item) pushed or read: a bigger push is refused whole, a
    /// bigger entry found in the stream goes to the dead-letter list unparsed.
    pub max_entry_bytes: usize,
    /// How long an outage is waited out (commands retried with backoff) before the caller sees
    /// an error.
    pub outage_budget: Duration,
    /// TLS for a `rediss://` URL: the CA that signs Redis's certificate, and this process's
    /// certificate when Redis demands one (`tls-auth-clients yes`).
    pub tls: Option<RedisTls>,
}

/// Certificates (PEM files) for Redis over TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The client for `options`: plain, or TLS with the given certificates (`rediss://` only, so a
/// URL never silently drops the encryption its operator asked for).
fn client(options: &RedisQueueOptions) -> Result<redis::Client> {
    let fail = |message: String| Error::Backend { queue: options.stream.clone(), message };
    let tls_url = options.url.starts_with("rediss://");
    let Some(tls) = &options.tls else {
        return redis::Client::open(options.url.as_str()).map_err(|e| backend(&options.stream, e));
    };
    if !tls_url {
        return Err(fail(format!("TLS certificates are given for Redis, but {} is not a rediss:// URL", options.url)));
    }
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| fail(format!("{}: {e}", p.display())));
    let client_tls = match &tls.identity {
        Some((cert, key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        None => None,
    };
    let certificates = redis::TlsCertificates { client_tls, root_cert: Some(read(&tls.ca)?) };
    // redis-rs asks rustls for the process's provider; name it (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    redis::Client::build_with_tls(options.url.as_str(), certificates).map_err(|e| backend(&options.stream, e))
}

/// Far above any rollout (a few KB to a few hundred KB), far below what hurts a worker.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 8 << 20;

impl RedisQueueOptions {
    pub fn new(url: &str, stream: &str) -> Self {
        RedisQueueOptions {
            url: url.to_string(),
            stream: stream.to_string(),
            group: format!("{stream}:workers"),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            outage_budget: DEFAULT_OUTAGE_BUDGET,
            tls: None,
        }
    }
}

/// A Redis stream used as a [`Queue`].
pub struct RedisQueue<T> {
    options: RedisQueueOptions,
    dead_stream: String,
    client: redis::Client,
    connection: Mutex<Option<Connection>>,
    /// Blocking reads get their own connection, so a push is not stuck behind a waiting pop.
    reader: Mutex<Option<Connection>>,
    link: Link,
    _items: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RedisQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("options", &self.options).finish_non_exhaustive()
    }
}

impl<T> RedisQueue<T> {
    /// Connects and creates the stream and its consumer group when they do not exist yet.
    pub fn connect(options: RedisQueueOptions) -> Result<Self> {
        let client = client(&options)?;
        let queue = RedisQueue {
            dead_stream: format!("{}:dead", options.stream),
            options,
            client,
            connection: Mutex::new(None),
            reader: Mutex::new(None),
            link: Link::default(),
            _items: PhantomData,
        };
        queue.with_connection(|c| queue.create_group(c))?;
        Ok(queue)
    }

    /// Creates the stream and its group (from the first entry) unless the group exists.
    fn create_group(&self, c: &mut Connection) -> RedisResult<()> {
        let created: RedisResult<()> = c.xgroup_create_mkstream(&self.options.stream, &self.options.group, "0");
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    pub fn options(&self) -> &RedisQueueOptions {
        &self.options
    }

    /// Runs `f` on the connection (see [`RedisQueue::on`]).
    fn with_connection<R>(&self, f: impl FnMut(&mut Connection) -> RedisResult<R>) -> Result<R> {
        self.on(&self.connection, Duration::ZERO, f)
    }

    /// Runs `f` on `connection`, which may block up to `blocking` by itself. While Redis is away
    /// the command is retried with backoff for up to the outage budget; a missing consumer group
    /// is created again (once per command) and the command retried.
    fn on<R>(
        &self,
        connection: &Mutex<Option<Connection>>,
        blocking: Duration,
        mut f: impl FnMut(&mut Connection) -> RedisResult<R>,
    ) -> Result<R> {
        let mut slot = connection.lock().map_err(|_| self.error("connection lock poisoned"))?;
        let mut backoff = Backoff::new();
        let mut recreated = false;
        let mut stale = false;
        loop {
            let fresh = slot.is_none();
            let attempt = (|| {
                if slot.is_none() {
                    *slot = Some(self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?);
                }
                let c = slot.as_mut().expect("connected above");
                c.set_read_timeout(Some(blocking + REPLY_TIMEOUT))?;
                f(c)
            })();
            let e = match attempt {
                Ok(r) => {
                    self.link.up(&self.options.stream);
                    return Ok(r);
                }
                Err(e) => e,
            };
            if e.code() == Some("NOGROUP") && !recreated {
                recreated = true;
                tracing::error!(stream = %self.options.stream, group = %self.options.group,
                    "the consumer group is gone: Redis lost its data; creating it again (entries pushed before are lost)");
                self.create_group(slot.as_mut().expect("a command ran on it")).map_err(|e| self.backend(e))?;
                self.link.group_recreated();
                continue;
            }
            if !is_transient(&e) {
                return Err(self.backend(e));
            }
            // The connection's state is unknown after an I/O error: start a new one, at once the
            // first time (an idle connection Redis dropped is not an outage).
            *slot = None;
            if !fresh && !stale {
                stale = true;
                continue;
            }
            let lasted = self.link.down(&self.options.stream, &e);
            if lasted >= self.options.outage_budget {
                return Err(self.error(&format!(
                    "Redis at {} has been unreachable for {lasted:.0?}, past the outage budget of {:?}: {e}",
                    self.options.url, self.options.outage_budget
                )));
            }
            backoff.pause(Instant::now() + (self.options.outage_budget - lasted));
        }
    }

    /// What the link to Redis looks like now; callable from any thread while a command waits.
    pub fn link_health(&self) -> QueueHealth {
        self.link.health()
    }

    fn backend(&self, e: redis::RedisError) -> Error {
        backend(&self.options.stream, e)
    }

    fn error(&self, message: &str) -> Error {
        Error::Backend { queue: self.options.stream.clone(), message: message.to_string() }
    }

    /// Frees every entry below the oldest one still needed: pending, or never delivered.
    fn trim(&self, c: &mut Connection) -> RedisResult<()> {
        let pending: StreamPendingReply = c.xpending(&self.options.stream, &self.options.group)?;
        let min_id = match pending {
            StreamPendingReply::Data(data) if data.count > 0 => data.start_id,
            _ => {
                let groups: StreamInfoGroupsReply = c.xinfo_groups(&self.options.stream)?;
                let Some(group) = groups.groups.iter().find(|g| g.name == self.options.group) else { return Ok(()) };
                match successor(&group.last_delivered_id) {
                    Some(id) => id,
                    None => return Ok(()),
                }
            }
        };
        let _: usize =
            c.xtrim_options(&self.options.stream, &StreamTrimOptions::minid(StreamTrimmingMode::Exact, min_id))?;
        Ok(())
    }

    /// Moves entries to the dead-letter stream and acknowledges them, in one transaction.
    fn bury(&self, c: &mut Connection, entries: &[(StreamId, usize, String)]) -> RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (entry, deliveries, reason) in entries {
            // Every field of the original as the bytes it was, valid UTF-8 or not, so the
            // dead letter can be read back exactly as it arrived.
            let mut fields: Vec<(String, Vec<u8>)> = entry
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value::<Vec<u8>>(v.clone()).unwrap_or_default()))
                .collect();
            fields.sort();
            fields.extend([
                ("source_id".to_string(), entry.id.clone().into_bytes()),
                ("deliveries".to_string(), deliveries.to_string().into_bytes()),
                ("reason".to_string(), reason.clone().into_bytes()),
            ]);
            pipe.xadd(&self.dead_stream, "*", &fields).ignore();
            pipe.xack(&self.options.stream, &self.options.group, &[&entry.id]).ignore();
        }
        pipe.query::<()>(c)
    }
}

/// The smallest stream id above `id`.
fn successor(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    if ms == 0 && seq == 0 {
        return None;
    }
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms + 1),
    })
}

fn backend(queue: &str, e: redis::RedisError) -> Error {
    Error::Backend { queue: queue.to_string(), message: e.to_string() }
}

fn decode<T: DeserializeOwned>(entry: &StreamId, max_bytes: usize) -> std::result::Result<Traced<T>, String> {
    let field = |name: &str| entry.get::<Vec<u8>>(name);
    parse_entry(field("data").as_deref(), field("traceparent").as_deref(), max_bytes)
}

/// An item from the raw fields of a stream entry as anyone with access to Redis may have written
/// them, or why the entry goes to the dead letters: no data, over `max_bytes`, not UTF-8, not
/// JSON of the item. (The `fuzz/` targets call this directly.)
pub fn parse_entry<T: DeserializeOwned>(
    data: Option<&[u8]>,
    traceparent: Option<&[u8]>,
    max_bytes: usize,
) -> std::result::Result<Traced<T>, String> {
    let data = data.ok_or("entry has no data field")?;
    if data.len() > max_bytes {
        return Err(format!("entry of {} bytes is over the {max_bytes}-byte cap", data.len()));
    }
    let data = std::str::from_utf8(data).map_err(|e| format!("entry is not UTF-8: {e}"))?;
    let item = serde_json::from_str(data).map_err(|e| format!("entry does not parse: {e}"))?;
    let traceparent = traceparent.and_then(|t| std::str::from_utf8(t).ok()).filter(|t| !t.is_empty());
    Ok(Traced { item, traceparent: traceparent.map(str::to_string) })
}

impl<T: DeserializeOwned> RedisQueue<T> {
    /// How often each of `entries` (pending with `consumer`) has been delivered.
    fn times_delivered(
        &self,
        c: &mut redis::Connection,
        entries: &[StreamId],
        consumer: &str,
    ) -> redis::RedisResult<HashMap<String, usize>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(HashMap::new()) };
        let pending: StreamPendingCountReply = c.xpending_consumer_count(
            &self.options.stream,
            &self.options.group,
            &first.id,
            &last.id,
            PAGE * 10,
            consumer,
        )?;
        Ok(pending.ids.into_iter().map(|p| (p.id, p.times_delivered)).collect())
    }

    /// The deliveries among re-delivered `entries`; those past the delivery limit or that do not
    /// parse go to the dead-letter list.
    fn deliver_or_bury(&self, entries: Vec<StreamId>, counts: &HashMap<String, usize>) -> Result<Vec<Delivery<T>>> {
        let mut out = vec![];
        let mut poison: Vec<(StreamId, usize, String)> = vec![];
        for entry in entries {
            let deliveries = counts.get(&entry.id).copied().unwrap_or(1);
            if deliveries > self.options.max_deliveries as usize {
                poison.push((entry, deliveries, format!("delivered {deliveries} times")));
                continue;
            }
            match decode::<T>(&entry, self.options.max_entry_bytes) {
                Ok(t) => out.push(Delivery {
                    id: entry.id.clone(),
                    deliveries: deliveries as u32,
                    item: t.item,
                    traceparent: t.traceparent,
                }),
                Err(reason) => poison.push((entry, deliveries, reason)),
            }
        }
        if !poison.is_empty() {
            self.with_connection(|c| {
                self.bury(c, &poison)?;
                self.trim(c)
            })?;
        }
        Ok(out)
    }
}

impl<T: Serialize + DeserializeOwned + Send> Queue<T> for RedisQueue<T> {
    fn push_traced(&self, items: Vec<Traced<T>>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let encoded = items
            .iter()
            .map(|t| serde_json::to_string(&t.item).map(|data| (data, t.traceparent.clone().unwrap_or_default())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.error(&format!("item does not serialise: {e}")))?;
        if let Some((data, _)) = encoded.iter().find(|(data, _)| data.len() > self.options.max_entry_bytes) {
            return Err(self.error(&format!(
                "an entry of {} bytes is over the {}-byte cap; nothing was pushed",
                data.len(),
                self.options.max_entry_bytes
            )));
        }
        self.with_connection(|c| {
            let mut pipe = redis::pipe();
            for (data, traceparent) in &encoded {
                pipe.xadd(&self.options.stream, "*", &[("data", data.as_str()), ("traceparent", traceparent.as_str())])
                    .ignore();
            }
            pipe.query::<()>(c)
        })
    }

    fn pop(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>> {
        let mut options = StreamReadOptions::default().group(&self.options.group, consumer).count(max.clamp(1, PAGE));
        if !wait.is_zero() {
            options = options.block(wait.as_millis().max(1) as usize);
        }
        let reply: Option<StreamReadReply> =
            self.on(&self.reader, wait, |c| c.xread_options(&[&self.options.stream], &[">"], &options))?;
        let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        let mut out = Vec::with_capacity(entries.len());
        let mut poison = vec![];
        for entry in &entries {
            match decode::<T>(entry, self.options.max_entry_bytes) {
                Ok(t) => {
                    out.push(Delivery { id: entry.id.clone(), deliveries: 1, item: t.item, traceparent: t.traceparent })
                }
                Err(reason) => poison.push((entry.clone(), 1, reason)),
            }
        }
        if !poison.is_empty() {
            self.with_connection(|c| self.bury(c, &poison))?;
        }
        Ok(out)
    }

    fn own_pending(&self, consumer: &str, max: usize) -> Result<Vec<Delivery<T>>> {
        let options = StreamReadOptions::default().group(&self.options.group, consumer).count(max.clamp(1, PAGE));
        // History ("0"), not new entries (">"): what this consumer was handed and never acked.
        let reply: Option<StreamReadReply> =
            self.on(&self.reader, Duration::ZERO, |c| c.xread_options(&[&self.options.stream], &["0"], &options))?;
        // An entry trimmed while pending comes back without fields: nothing left to deliver.
        let entries: Vec<StreamId> =
            reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).filter(|e| !e.map.is_empty()).collect();
        let counts = self.with_connection(|c| self.times_delivered(c, &entries, consumer))?;
        self.deliver_or_bury(entries, &counts)
    }

    fn ack(&self, ids: &[EntryId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.with_connection(|c| {
            let _: usize = c.xack(&self.options.stream, &self.options.group, ids)?;
            self.trim(c)
        })
    }

    fn claim_stale(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<T>>> {
        let max = max.clamp(1, PAGE);
        let idle_ms = min_idle.as_millis() as usize;
        let (claimed, counts) = self.with_connection(|c| {
            let mut claimed: Vec<StreamId> = vec![];
            let mut cursor = "0-0".to_string();
            loop {
                let reply: StreamAutoClaimReply = c.xautoclaim_options(
                    &self.options.stream,
                    &self.options.group,
                    consumer,
                    idle_ms,
                    &cursor,
                    StreamAutoClaimOptions::default().count(max - claimed.len()),
                )?;
                claimed.extend(reply.claimed);
                cursor = reply.next_stream_id;
                if cursor == "0-0" || claimed.len() >= max {
                    break;
                }
            }
            let counts = self.times_delivered(c, &claimed, consumer)?;
            Ok((claimed, counts))
        })?;
        self.deliver_or_bury(claimed, &counts)
    }

    fn keep_alive(&self, consumer: &str, ids: &[EntryId]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.with_connection(|c| {
            redis::cmd("EVAL")
                .arg(KEEP_ALIVE)
                .arg(1)
                .arg(&self.options.stream)
                .arg(&self.options.group)
                .arg(consumer)
                .arg(ids)
                .query(c)
        })
    }

    fn ready(&self) -> Result<usize> {
        self.with_connection(|c| {
            let groups: StreamInfoGroupsReply = c.xinfo_groups(&self.options.stream)?;
            let Some(group) = groups.groups.into_iter().find(|g| g.name == self.options.group) else { return Ok(0) };
            if let Some(lag) = group.lag {
                return Ok(lag);
            }
            // Redis leaves the lag unknown after some deletions: count what lies past the cursor.
            let after = format!("({}", group.last_delivered_id);
            let range: StreamRangeReply = c.xrange(&self.options.stream, after, "+")?;
            Ok(range.ids.len())
        })
    }

    fn pending(&self) -> Result<usize> {
        self.with_connection(|c| {
            let reply: StreamPendingReply = c.xpending(&self.options.stream, &self.options.group)?;
            Ok(reply.count())
        })
    }

    fn stored(&self) -> Result<usize> {
        self.with_connection(|c| c.xlen(&self.options.stream))
    }

    fn dead_letters(&self) -> Result<usize> {
        self.with_connection(|c| c.xlen(&self.dead_stream))
    }

    fn health(&self) -> QueueHealth {
        self.link_health()
    }
}

/// Fuzzing of the decoding of stream entries, which anyone with access to Redis can write:
/// any bytes in any field are an item, or a reason to bury the entry; never a panic.
#[cfg(test)]
mod fuzz {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use redis::Value;
    use redis::streams::StreamId;

    use super::decode;

    fn entry(data: Option<Vec<u8>>, traceparent: Option<Vec<u8>>) -> StreamId {
        let mut map = HashMap::new();
        if let Some(d) = data {
            map.insert("data".to_string(), Value::BulkString(d));
        }
        if let Some(t) = traceparent {
            map.insert("traceparent".to_string(), Value::BulkString(t));
        }
        StreamId { id: "1-0".into(), map, milliseconds_elapsed_from_delivery: None, delivered_count: None }
    }

    proptest! {
        #![proptest_config(rlhf_harness::fuzzing("src/redis_streams.proptest-regressions"))]

        #[test]
        fn any_entry_decodes_or_is_buried_with_a_reason(
            data in prop::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                any::<Vec<(String, u8)>>().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            ]),
            traceparent in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            cap in 0usize..80,
        ) {
            let size = data.as_ref().map(Vec::len);
            match decode::<Vec<(String, u8)>>(&entry(data.clone(), traceparent), cap) {
                Ok(t) => {
                    prop_assert!(size.is_some_and(|n| n <= cap));
                    prop_assert_eq!(serde_json::from_slice::<Vec<(String, u8)>>(&data.unwrap()).unwrap(), t.item);
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }

        /// What a producer pushes comes back as it was, with its trace context.
        #[test]
        fn a_pushed_item_decodes_to_itself(item in any::<Vec<(String, u8)>>(), traced in any::<bool>()) {
            let data = serde_json::to_vec(&item).unwrap();
            let parent = traced.then(|| b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec());
            let t = decode::<Vec<(String, u8)>>(&entry(Some(data), parent.clone()), usize::MAX).unwrap();
            prop_assert_eq!(t.item, item);
            prop_assert_eq!(t.traceparent.map(String::into_bytes), parent);
        }
    }
}
