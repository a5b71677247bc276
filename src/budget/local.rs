//! The in-process store: per-limit counters in sharded maps. A shard's lock is held only for
//! a few arithmetic operations, never across I/O or an `.await`; a request counted by several
//! limits reserves in each in turn and rolls back what it took when a later one refuses.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use super::{Entry, Refusal};
use crate::crd::ObjectKey;

/// Keys held per limit; beyond this, expired and empty keys are dropped and then new keys
/// refused, so callers cannot grow memory without bound.
pub const MAX_KEYS: usize = 65_536;
const SHARDS: usize = 16;

/// One counter: the current bucket and the one before it.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    bucket: i64,
    cur: u64,
    prev: u64,
}

impl Slot {
    fn roll(&mut self, bucket: i64) {
        if self.bucket == bucket {
            return;
        }
        self.prev = if self.bucket + 1 == bucket {
            self.cur
        } else {
            0
        };
        self.cur = 0;
        self.bucket = bucket;
    }
}

// A short, synchronous critical section: the case tokio's documentation recommends the
// standard mutex for. No lock is ever held across an `.await`.
#[allow(clippy::disallowed_types)]
type Shard = std::sync::Mutex<HashMap<String, Slot>>;

/// The counters of one limit.
#[derive(Debug)]
pub struct Counters {
    shards: Vec<Shard>,
    hasher: RandomState,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// What one key has used, for status.
#[derive(Clone, Debug, PartialEq)]
pub struct Used {
    /// The key.
    pub key: String,
    /// Sliding estimate now.
    pub used: u64,
}

impl Counters {
    fn shard(&self, key: &str) -> &Shard {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Reserve `need` under `max` if it fits: `Ok(())`, or the estimate used now.
    fn reserve(
        &self,
        key: &str,
        bucket: i64,
        prev_weight: f64,
        need: u64,
        max: u64,
    ) -> Result<(), (u64, u64, u64)> {
        let Ok(mut map) = self.shard(key).lock() else {
            return Err((max, 0, max));
        };
        if !map.contains_key(key) && map.len() >= MAX_KEYS / SHARDS {
            // Keys of rolled-out buckets, and keys holding nothing (released reservations).
            map.retain(|_, s| s.bucket + 1 >= bucket && (s.cur > 0 || s.prev > 0));
            if map.len() >= MAX_KEYS / SHARDS {
                return Err((max, 0, max));
            }
        }
        if !map.contains_key(key) {
            map.insert(key.to_owned(), Slot::default());
        }
        let Some(slot) = map.get_mut(key) else {
            return Err((max, 0, max));
        };
        slot.roll(bucket);
        let used = (slot.prev as f64 * prev_weight).ceil() as u64 + slot.cur;
        if used.saturating_add(need) > max {
            return Err((used, slot.prev, slot.cur));
        }
        slot.cur += need;
        Ok(())
    }

    /// Add `delta` to what `key` used in `bucket` (a settlement); a bucket that has rolled
    /// out is left alone.
    pub fn adjust(&self, key: &str, bucket: i64, delta: i64) {
        if delta == 0 {
            return;
        }
        let Ok(mut map) = self.shard(key).lock() else {
            return;
        };
        let Some(slot) = map.get_mut(key) else {
            return;
        };
        let apply = |v: &mut u64| *v = v.saturating_add_signed(delta);
        if slot.bucket == bucket {
            apply(&mut slot.cur);
        } else if slot.bucket == bucket + 1 {
            apply(&mut slot.prev);
        }
    }

    /// The most-used keys now, highest first.
    pub fn top(&self, window: super::Window, now_ms: u64, n: usize) -> Vec<Used> {
        let pos = window.position(now_ms);
        let mut all = Vec::new();
        for shard in &self.shards {
            let Ok(map) = shard.lock() else { continue };
            for (key, slot) in map.iter() {
                let mut s = *slot;
                s.roll(pos.bucket);
                let used = (s.prev as f64 * pos.prev_weight).ceil() as u64 + s.cur;
                if used > 0 {
                    all.push(Used {
                        key: key.clone(),
                        used,
                    });
                }
            }
        }
        all.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// Record what the shared store reported for a key (status of Redis-backed limits).
    pub fn mirror(&self, key: &str, bucket: i64, prev: u64, cur: u64) {
        if let Ok(mut map) = self.shard(key).lock()
            && (map.contains_key(key) || map.len() < MAX_KEYS / SHARDS)
        {
            map.insert(key.to_owned(), Slot { bucket, cur, prev });
        }
    }
}

/// Reserve every entry, or none: on a refusal, what earlier entries took is given back.
pub fn admit(budget: &ObjectKey, entries: &mut [Entry], now_ms: u64) -> Result<(), Refusal> {
    for i in 0..entries.len() {
        let limit = entries[i].limit.clone();
        let pos = limit.window.position(now_ms);
        entries[i].bucket = pos.bucket;
        let reserved = limit.counters.reserve(
            &entries[i].key,
            pos.bucket,
            pos.prev_weight,
            entries[i].need,
            limit.max,
        );
        if let Err((used, prev, cur)) = reserved {
            for e in &entries[..i] {
                e.limit.counters.adjust(&e.key, e.bucket, -(e.need as i64));
            }
            return Err(Refusal::Limited {
                budget: budget.clone(),
                limit: limit.name.clone(),
                unit: limit.unit,
                max: limit.max,
                used,
                need: entries[i].need,
                retry_after_ms: limit
                    .window
                    .wait_ms(now_ms, prev, cur, entries[i].need, limit.max),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_limit_drops_released_keys_before_refusing_new_ones() {
        let counters = Counters::default();
        // Fill every shard with keys that hold a reservation.
        let mut held = 0;
        for i in 0..(MAX_KEYS * 2) {
            if counters.reserve(&format!("k{i}"), 7, 0.0, 1, 10).is_ok() {
                held += 1;
            }
        }
        assert_eq!(held, MAX_KEYS, "no more keys than the bound");
        assert!(counters.reserve("new", 7, 0.0, 1, 10).is_err());
        // Released reservations leave their keys empty: new keys fit again.
        for i in 0..(MAX_KEYS * 2) {
            counters.adjust(&format!("k{i}"), 7, -1);
        }
        assert!(counters.reserve("new", 7, 0.0, 1, 10).is_ok());
        // A key still holding usage is never dropped.
        assert!(counters.reserve("new", 7, 0.0, 10, 10).is_err());
    }
}
