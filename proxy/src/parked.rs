//! A bounded map of values parked between two threads for a short time: a decision and
//! its ready upstream connection, from the verdict (which holds the client's SYN) to
//! the accept path (which takes them once the kernel completes the handshake).
//!
//! Every operation is O(1) amortized: entries expire in insertion order (one TTL for
//! all), so expiry pops from the front of a queue instead of scanning the map, and the
//! map never holds more than its capacity (the oldest entry is evicted first). A flood
//! of SYNs whose handshakes never complete therefore costs bounded memory and constant
//! time per packet.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What [`Parked::insert`] had to drop to stay within its bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Entries that outlived the TTL.
    pub expired: usize,
    /// Live entries evicted because the map was full.
    pub evicted: usize,
    /// A live entry under the same key, replaced by the insert.
    pub replaced: usize,
}

impl Dropped {
    /// Every entry dropped.
    pub fn total(&self) -> usize {
        self.expired + self.evicted + self.replaced
    }
}

struct Inner<K, V> {
    map: HashMap<K, (V, u64, Instant)>,
    /// (sequence, key, inserted at), oldest first; stale items (taken or replaced
    /// entries) are skipped when they reach the front.
    order: VecDeque<(u64, K, Instant)>,
    seq: u64,
}

/// A bounded, expiring map (see the module docs).
pub struct Parked<K, V> {
    inner: Mutex<Inner<K, V>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Parked<K, V> {
    /// An empty map whose entries live at most `ttl`, with at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Parked {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
            }),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Parks `value` under `key` (replacing an older value). Expired entries, and the
    /// oldest live ones when the map is full, are dropped here, outside the lock.
    pub fn insert(&self, key: K, value: V) -> Dropped {
        let mut gone = Vec::new();
        let mut dropped = Dropped::default();
        if let Ok(mut inner) = self.inner.lock() {
            let now = Instant::now();
            dropped = self.pop_front(&mut inner, now, self.capacity, &mut gone);
            let Inner { map, order, seq } = &mut *inner;
            *seq += 1;
            if let Some((v, _, _)) = map.insert(key.clone(), (value, *seq, now)) {
                gone.push(v);
                dropped.replaced += 1;
            }
            order.push_back((*seq, key, now));
        }
        drop(gone);
        dropped
    }

    /// Drops the expired entries (closing what they hold) without inserting: run it
    /// from a timer, so that a quiet map does not keep them until the next insert.
    pub fn sweep(&self) -> Dropped {
        let mut gone = Vec::new();
        let dropped = match self.inner.lock() {
            Ok(mut inner) => self.pop_front(&mut inner, Instant::now(), usize::MAX, &mut gone),
            Err(_) => Dropped::default(),
        };
        drop(gone);
        dropped
    }

    /// Pops from the front of the queue: items whose entry is gone or was replaced, then
    /// expired ones, then (while the map holds `room` or more) the oldest live one.
    fn pop_front(
        &self,
        inner: &mut Inner<K, V>,
        now: Instant,
        room: usize,
        gone: &mut Vec<V>,
    ) -> Dropped {
        let mut dropped = Dropped::default();
        let Inner { map, order, .. } = inner;
        while let Some((s, k, at)) = order.front() {
            let live = map.get(k).is_some_and(|(_, cur, _)| cur == s);
            let expired = now.duration_since(*at) >= self.ttl;
            if live && !expired && map.len() < room {
                break;
            }
            if live {
                if expired {
                    dropped.expired += 1;
                } else {
                    dropped.evicted += 1;
                }
                if let Some((v, _, _)) = map.remove(k) {
                    gone.push(v);
                }
            }
            order.pop_front();
        }
        dropped
    }

    /// Takes the value parked under `key`, if it has not expired.
    pub fn take(&self, key: &K) -> Option<V> {
        let (value, _, at) = self.inner.lock().ok()?.map.remove(key)?;
        (at.elapsed() < self.ttl).then_some(value)
    }

    /// Whether a value is parked under `key`.
    pub fn contains(&self, key: &K) -> bool {
        self.inner.lock().is_ok_and(|i| i.map.contains_key(key))
    }

    /// Entries parked now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn take_returns_each_value_once() {
        let p = Parked::new(Duration::from_secs(10), 4);
        p.insert(1, "a");
        p.insert(2, "b");
        assert_eq!(p.take(&1), Some("a"));
        assert_eq!(p.take(&1), None);
        assert_eq!(p.len(), 1);
        p.insert(2, "c");
        assert_eq!(p.take(&2), Some("c"), "a newer value replaces the older");
    }

    #[test]
    fn the_map_stays_within_its_capacity_evicting_the_oldest() {
        let p = Parked::new(Duration::from_secs(60), 100);
        let mut evicted = 0;
        for i in 0..10_000 {
            evicted += p.insert(i, i).evicted;
        }
        assert_eq!(p.len(), 100);
        assert_eq!(evicted, 9_900);
        assert_eq!(p.take(&9_999), Some(9_999));
        assert_eq!(p.take(&0), None);
        let inner = p.inner.lock().unwrap();
        assert!(inner.order.len() <= 101, "queue {}", inner.order.len());
    }

    #[test]
    fn expired_entries_are_not_returned_and_are_dropped_on_insert() {
        let p = Parked::new(Duration::from_millis(30), 1000);
        for i in 0..50 {
            p.insert(i, i);
        }
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.take(&3), None, "expired");
        let d = p.insert(100, 100);
        assert_eq!(d.expired, 49);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_sweep_drops_expired_entries_without_an_insert() {
        let p = Parked::new(Duration::from_millis(30), 1000);
        for i in 0..10 {
            p.insert(i, i);
        }
        assert_eq!(p.sweep().expired, 0, "nothing expired yet");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.sweep().expired, 10);
        assert!(p.is_empty());
    }

    #[test]
    fn taken_entries_do_not_pile_up_in_the_queue() {
        let p = Parked::new(Duration::from_secs(60), 1000);
        for i in 0..100_000u32 {
            p.insert(i, i);
            assert_eq!(p.take(&i), Some(i));
        }
        let inner = p.inner.lock().unwrap();
        assert!(inner.order.len() <= 2, "queue {}", inner.order.len());
    }

    #[test]
    fn a_replaced_entry_is_counted() {
        let p: Parked<u32, u32> = Parked::new(Duration::from_secs(60), 8);
        assert_eq!(p.insert(1, 10).total(), 0);
        let d = p.insert(1, 11);
        assert_eq!(d.replaced, 1, "{d:?}");
        assert_eq!(p.take(&1), Some(11));
    }
}
