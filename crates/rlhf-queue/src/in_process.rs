//! The embedded queue of the one-machine mode: same semantics as the Redis stream, in memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{DEFAULT_MAX_DELIVERIES, Delivery, EntryId, Error, Queue, Result, Traced};

struct Entry<T> {
    id: u64,
    deliveries: u32,
    item: Traced<T>,
}

struct Pending<T> {
    since: Instant,
    consumer: String,
    entry: Entry<T>,
}

struct State<T> {
    next_id: u64,
    ready: VecDeque<Entry<T>>,
    pending: BTreeMap<u64, Pending<T>>,
    dead: Vec<Entry<T>>,
}

/// The in-process queue.
pub struct InProcessQueue<T> {
    name: String,
    max_deliveries: u32,
    state: Mutex<State<T>>,
    pushed: Condvar,
}

impl<T> std::fmt::Debug for InProcessQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessQueue").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T> InProcessQueue<T> {
    pub fn new(name: &str) -> Self {
        Self::with_max_deliveries(name, DEFAULT_MAX_DELIVERIES)
    }

    pub fn with_max_deliveries(name: &str, max_deliveries: u32) -> Self {
        InProcessQueue {
            name: name.to_string(),
            max_deliveries: max_deliveries.max(1),
            state: Mutex::new(State { next_id: 1, ready: VecDeque::new(), pending: BTreeMap::new(), dead: vec![] }),
            pushed: Condvar::new(),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State<T>>> {
        self.state.lock().map_err(|_| self.poisoned())
    }

    fn poisoned(&self) -> Error {
        Error::Backend { queue: self.name.clone(), message: "lock poisoned".into() }
    }

    fn parse(&self, id: &str) -> Result<u64> {
        id.strip_prefix("0-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Backend { queue: self.name.clone(), message: format!("not an entry id: {id:?}") })
    }
}

impl<T: Clone> InProcessQueue<T> {
    /// Hands the pending entries `ids` to `consumer` once more, burying those past the delivery
    /// limit.
    fn redeliver(&self, state: &mut State<T>, ids: Vec<u64>, consumer: &str) -> Vec<Delivery<T>> {
        let now = Instant::now();
        let mut out = vec![];
        for id in ids {
            let mut pending = state.pending.remove(&id).expect("listed by the caller");
            pending.entry.deliveries += 1;
            if pending.entry.deliveries > self.max_deliveries {
                state.dead.push(pending.entry);
                continue;
            }
            out.push(deliver(&pending.entry));
            state.pending.insert(id, Pending { since: now, consumer: consumer.to_string(), entry: pending.entry });
        }
        out
    }
}

fn deliver<T: Clone>(entry: &Entry<T>) -> Delivery<T> {
    Delivery {
        id: format!("0-{}", entry.id),
        deliveries: entry.deliveries,
        item: entry.item.item.clone(),
        traceparent: entry.item.traceparent.clone(),
    }
}

impl<T: Clone + Send> Queue<T> for InProcessQueue<T> {
    fn push_traced(&self, items: Vec<Traced<T>>) -> Result<()> {
        let mut state = self.lock()?;
        for item in items {
            let id = state.next_id;
            state.next_id += 1;
            state.ready.push_back(Entry { id, deliveries: 0, item });
        }
        self.pushed.notify_all();
        Ok(())
    }

    fn pop(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>> {
        let mut state = self.lock()?;
        if state.ready.is_empty() && !wait.is_zero() {
            state = self.pushed.wait_timeout_while(state, wait, |s| s.ready.is_empty()).map_err(|_| self.poisoned())?.0;
        }
        let n = max.min(state.ready.len());
        let now = Instant::now();
        let mut out = Vec::with_capacity(n);
        for mut entry in state.ready.drain(..n).collect::<Vec<_>>() {
            entry.deliveries += 1;
            out.push(deliver(&entry));
            state.pending.insert(entry.id, Pending { since: now, consumer: consumer.to_string(), entry });
        }
        Ok(out)
    }

    fn ack(&self, ids: &[EntryId]) -> Result<()> {
        let ids = ids.iter().map(|id| self.parse(id)).collect::<Result<Vec<_>>>()?;
        let mut state = self.lock()?;
        for id in ids {
            state.pending.remove(&id);
        }
        Ok(())
    }

    fn own_pending(&self, consumer: &str, max: usize) -> Result<Vec<Delivery<T>>> {
        let mut state = self.lock()?;
        let own: Vec<u64> =
            state.pending.iter().filter(|(_, p)| p.consumer == consumer).map(|(id, _)| *id).take(max).collect();
        Ok(self.redeliver(&mut state, own, consumer))
    }

    fn claim_stale(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<T>>> {
        let mut state = self.lock()?;
        let now = Instant::now();
        let stale: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= min_idle)
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        Ok(self.redeliver(&mut state, stale, consumer))
    }

    fn keep_alive(&self, consumer: &str, ids: &[EntryId]) -> Result<usize> {
        let ids = ids.iter().map(|id| self.parse(id)).collect::<Result<Vec<_>>>()?;
        let mut state = self.lock()?;
        let now = Instant::now();
        let mut held = 0;
        for id in ids {
            if let Some(p) = state.pending.get_mut(&id).filter(|p| p.consumer == consumer) {
                p.since = now;
                held += 1;
            }
        }
        Ok(held)
    }

    fn ready(&self) -> Result<usize> {
        Ok(self.lock()?.ready.len())
    }

    fn pending(&self) -> Result<usize> {
        Ok(self.lock()?.pending.len())
    }

    fn stored(&self) -> Result<usize> {
        let state = self.lock()?;
        Ok(state.ready.len() + state.pending.len())
    }

    fn dead_letters(&self) -> Result<usize> {
        Ok(self.lock()?.dead.len())
    }
}
