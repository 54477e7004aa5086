//! The short-lived cache behind TokenReviews and SubjectAccessReviews, with refresh-ahead.
//!
//! An entry is served while it is younger than the TTL and never after, so a revoked token or
//! role still stops working within the TTL. The first read in the last quarter of an entry's life
//! is told to refresh it in the background: a caller who keeps asking (a UI polling its project
//! list, a CI key) is answered from memory and never waits for the API server on the request
//! path, while entries nobody reads simply expire.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry<V> {
    at: Instant,
    value: V,
    refreshing: bool,
}

/// A bounded map of values that expire after a fixed time.
pub struct TtlCache<K, V> {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<K, Entry<V>>>,
}

/// A cached value.
pub struct Hit<V> {
    /// The value (younger than the TTL).
    pub value: V,
    /// In the last quarter of its TTL, and nobody refreshes it yet: this reader should (then `insert` the
    /// new value, or `refresh_failed`).
    pub refresh: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// A cache of at most `max` entries living `ttl` each.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max, map: Mutex::new(HashMap::new()) }
    }

    /// The value of `key`, unless missing or expired.
    pub fn get(&self, key: &K) -> Option<Hit<V>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<Hit<V>> {
        // A poisoned lock only loses the cache, never the answer: the caller asks the API server.
        let mut map = self.map.lock().ok()?;
        let e = map.get_mut(key)?;
        let age = now.saturating_duration_since(e.at);
        if age >= self.ttl {
            return None;
        }
        // Late enough that a hot entry costs the API server about one review per 3/4 TTL (not
        // much over expiring it), early enough that the review usually lands before expiry.
        let refresh = age >= self.ttl * 3 / 4 && !e.refreshing;
        e.refreshing |= refresh;
        Some(Hit { value: e.value.clone(), refresh })
    }

    /// Stores a fresh value for `key`.
    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    fn insert_at(&self, key: K, value: V, now: Instant) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.max && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, e| now.saturating_duration_since(e.at) < ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, Entry { at: now, value, refreshing: false });
    }

    /// A background refresh of `key` failed: the next reader in the last quarter tries again.
    pub fn refresh_failed(&self, key: &K) {
        if let Ok(mut map) = self.map.lock()
            && let Some(e) = map.get_mut(key)
        {
            e.refreshing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn served_until_the_ttl_and_refreshed_once_in_its_last_quarter() {
        let c = TtlCache::new(TTL, 10);
        let t0 = Instant::now();
        c.insert_at("k", 1, t0);
        let early = c.get_at(&"k", t0 + Duration::from_secs(7)).expect("fresh");
        assert_eq!((early.value, early.refresh), (1, false));
        let late = c.get_at(&"k", t0 + Duration::from_secs(8)).expect("still served");
        assert!(late.refresh, "the first reader in the last quarter refreshes");
        assert!(!c.get_at(&"k", t0 + Duration::from_secs(9)).expect("served").refresh, "only one refresh at a time");
        assert!(c.get_at(&"k", t0 + TTL).is_none(), "never served at or after the TTL");
    }

    #[test]
    fn a_failed_refresh_is_tried_again_and_an_insert_restarts_the_clock() {
        let c = TtlCache::new(TTL, 10);
        let t0 = Instant::now();
        c.insert_at("k", false, t0);
        assert!(c.get_at(&"k", t0 + Duration::from_secs(8)).expect("served").refresh);
        c.refresh_failed(&"k");
        assert!(c.get_at(&"k", t0 + Duration::from_secs(9)).expect("served").refresh, "asked again");
        let t1 = t0 + Duration::from_secs(9);
        c.insert_at("k", true, t1);
        let hit = c.get_at(&"k", t1 + Duration::from_secs(9)).expect("the new value lives a full TTL");
        assert_eq!((hit.value, hit.refresh), (true, true));
    }

    #[test]
    fn bounded_expired_entries_go_first() {
        let c = TtlCache::new(TTL, 2);
        let t0 = Instant::now();
        c.insert_at("old", 1, t0);
        c.insert_at("new", 2, t0 + Duration::from_secs(9));
        c.insert_at("newest", 3, t0 + Duration::from_secs(11));
        let now = t0 + Duration::from_secs(12);
        assert!(c.get_at(&"old", now).is_none());
        assert_eq!(c.get_at(&"new", now).map(|h| h.value), Some(2), "a live entry survives while room is made");
        assert_eq!(c.get_at(&"newest", now).map(|h| h.value), Some(3));
        c.insert_at("fourth", 4, now);
        assert_eq!(c.get_at(&"fourth", now).map(|h| h.value), Some(4), "a full cache of live entries starts over");
        assert!(c.get_at(&"new", now).is_none());
    }
}
