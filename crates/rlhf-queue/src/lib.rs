//! Queues between the stages: raw rollouts from generators to the scorer, scored rollouts from
//! the scorer to the learner.
//!
//! Delivery is at least once: [`Queue::pop`] hands entries to a consumer and keeps them
//! pending until [`Queue::ack`]; [`Queue::reclaim`] gives the pending entries of a consumer that
//! died back to the others. Consumers therefore deduplicate (the learner does, by rollout id).
//! This is the contract Redis Streams consumer groups offer (XREADGROUP, XACK, XAUTOCLAIM), so the
//! Redis implementation can pass the same tests.
//!
//! # Layout
//! - [`Queue`]: the trait.
//! - [`InProcessQueue`]: the embedded default, a mutex-guarded deque.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Identifies one delivered entry for [`Queue::ack`].
pub type EntryId = u64;

/// An entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    pub id: EntryId,
    /// How many times this entry has been handed out, this time included.
    pub deliveries: u32,
    pub item: T,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue {queue}: {message}")]
    Backend { queue: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A work queue with acknowledgements.
pub trait Queue<T>: Send + Sync {
    fn push(&self, items: Vec<T>) -> Result<()>;
    /// Up to `max` entries not yet handed out, now pending for `consumer`.
    fn pop(&self, consumer: &str, max: usize) -> Result<Vec<Delivery<T>>>;
    /// Marks entries as done; they are never delivered again.
    fn ack(&self, ids: &[EntryId]) -> Result<()>;
    /// Returns the pending entries of `consumer` to the queue (it died or gave up on them).
    fn reclaim(&self, consumer: &str) -> Result<usize>;
    /// Entries waiting to be handed out.
    fn ready(&self) -> Result<usize>;
    /// Entries handed out and not yet acknowledged.
    fn pending(&self) -> Result<usize>;
}

struct Entry<T> {
    id: EntryId,
    deliveries: u32,
    item: T,
}

struct State<T> {
    next_id: EntryId,
    ready: VecDeque<Entry<T>>,
    /// By entry id: the consumer holding it and the entry.
    pending: BTreeMap<EntryId, (String, Entry<T>)>,
}

/// The in-process queue of the one-machine mode.
pub struct InProcessQueue<T> {
    name: String,
    state: Mutex<State<T>>,
}

impl<T> std::fmt::Debug for InProcessQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessQueue").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T> InProcessQueue<T> {
    pub fn new(name: &str) -> Self {
        InProcessQueue {
            name: name.to_string(),
            state: Mutex::new(State { next_id: 1, ready: VecDeque::new(), pending: BTreeMap::new() }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State<T>>> {
        self.state.lock().map_err(|_| Error::Backend { queue: self.name.clone(), message: "lock poisoned".into() })
    }
}

impl<T: Clone + Send> Queue<T> for InProcessQueue<T> {
    fn push(&self, items: Vec<T>) -> Result<()> {
        let mut state = self.lock()?;
        for item in items {
            let id = state.next_id;
            state.next_id += 1;
            state.ready.push_back(Entry { id, deliveries: 0, item });
        }
        Ok(())
    }

    fn pop(&self, consumer: &str, max: usize) -> Result<Vec<Delivery<T>>> {
        let mut state = self.lock()?;
        let n = max.min(state.ready.len());
        let mut out = Vec::with_capacity(n);
        for mut entry in state.ready.drain(..n).collect::<Vec<_>>() {
            entry.deliveries += 1;
            out.push(Delivery { id: entry.id, deliveries: entry.deliveries, item: entry.item.clone() });
            state.pending.insert(entry.id, (consumer.to_string(), entry));
        }
        Ok(out)
    }

    fn ack(&self, ids: &[EntryId]) -> Result<()> {
        let mut state = self.lock()?;
        for id in ids {
            state.pending.remove(id);
        }
        Ok(())
    }

    fn reclaim(&self, consumer: &str) -> Result<usize> {
        let mut state = self.lock()?;
        let ids: Vec<EntryId> = state.pending.iter().filter(|(_, (c, _))| c == consumer).map(|(id, _)| *id).collect();
        // Reclaimed entries go first, oldest first, as XAUTOCLAIM would hand them out.
        for id in ids.iter().rev() {
            let (_, entry) = state.pending.remove(id).expect("listed above");
            state.ready.push_front(entry);
        }
        Ok(ids.len())
    }

    fn ready(&self) -> Result<usize> {
        Ok(self.lock()?.ready.len())
    }

    fn pending(&self) -> Result<usize> {
        Ok(self.lock()?.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_pending_until_acknowledged_and_can_be_reclaimed() {
        let q = InProcessQueue::new("raw");
        q.push(vec!["a", "b", "c"]).unwrap();
        let first = q.pop("worker-1", 2).unwrap();
        assert_eq!(first.iter().map(|d| d.item).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (1, 2));
        q.ack(&[first[0].id]).unwrap();
        // worker-1 dies holding "b": another worker gets it back, delivered a second time.
        assert_eq!(q.reclaim("worker-1").unwrap(), 1);
        let second = q.pop("worker-2", 10).unwrap();
        assert_eq!(second.iter().map(|d| (d.item, d.deliveries)).collect::<Vec<_>>(), vec![("b", 2), ("c", 1)]);
        q.ack(&second.iter().map(|d| d.id).collect::<Vec<_>>()).unwrap();
        assert_eq!((q.ready().unwrap(), q.pending().unwrap()), (0, 0));
        assert!(q.pop("worker-2", 10).unwrap().is_empty());
    }
}
