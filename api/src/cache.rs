//! The short-lived cache behind TokenReviews and SubjectAccessReviews, with refresh-ahead.
//!
//! An entry is stamped with the time its review was *sent* and is served for at most the TTL
//! from then, so a revoked token or role stops working within the TTL of the revocation, however
//! slow a review is. The first read in the last quarter of an entry's life refreshes it in the
//! background: a caller who keeps asking (a UI polling its project list, a CI key) is answered
//! from memory and does not wait for the API server on the request path, while entries nobody
//! reads simply expire. An answer never replaces one from a later review.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Entry<V> {
    /// When the review that gave `value` was sent.
    asked: Instant,
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
struct Hit<V> {
    value: V,
    /// In the last quarter of its TTL, and nobody refreshes it yet: this reader does.
    refresh: bool,
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `max` entries living `ttl` each.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max, map: Mutex::new(HashMap::new()) }
    }

    /// The value of `key`, unless missing or expired. When it is due, `review()` is sent now and
    /// its answer replaces the value in the background (a failed one is tried again by a later
    /// reader).
    pub fn get<F, E>(self: &Arc<Self>, key: &K, review: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        let hit = self.get_at(key, Instant::now())?;
        if hit.refresh {
            let (cache, key, asked, answer) = (self.clone(), key.clone(), Instant::now(), review());
            tokio::spawn(async move {
                match answer.await {
                    Ok(v) => cache.insert(key, v, asked),
                    Err(_) => cache.refresh_failed(&key),
                }
            });
        }
        Some(hit.value)
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<Hit<V>> {
        // A poisoned lock only loses the cache, never the answer: the caller asks the API server.
        let mut map = self.map.lock().ok()?;
        let e = map.get_mut(key)?;
        let age = now.saturating_duration_since(e.asked);
        if age >= self.ttl {
            return None;
        }
        // Late enough that a hot entry costs the API server about one review per 3/4 TTL (not
        // much over expiring it), early enough that the review usually lands before expiry.
        let refresh = age >= self.ttl - self.ttl / 4 && !e.refreshing;
        e.refreshing |= refresh;
        Some(Hit { value: e.value.clone(), refresh })
    }

    /// Stores the answer of a review sent at `asked`, unless a later review's answer is there.
    pub fn insert(&self, key: K, value: V, asked: Instant) {
        let Ok(mut map) = self.map.lock() else { return };
        match map.get_mut(&key) {
            Some(e) if e.asked > asked => e.refreshing = false,
            Some(e) => *e = Entry { asked, value, refreshing: false },
            None => {
                if self.max == 0 {
                    return;
                }
                if map.len() >= self.max {
                    let ttl = self.ttl;
                    map.retain(|_, e| asked.saturating_duration_since(e.asked) < ttl);
                    if map.len() >= self.max {
                        // Full of live entries: drop the oldest quarter (not everything, so a
                        // flood of new keys costs the others little; a quarter, so making room
                        // is O(1) per insert on average).
                        let mut ages: Vec<Instant> = map.values().map(|e| e.asked).collect();
                        let k = (ages.len() / 4).max(1) - 1;
                        let (_, cutoff, _) = ages.select_nth_unstable(k);
                        let cutoff = *cutoff;
                        map.retain(|_, e| e.asked > cutoff);
                    }
                }
                map.insert(key, Entry { asked, value, refreshing: false });
            }
        }
    }

    /// The value of `key` unless missing or expired, without refreshing it.
    pub fn peek(&self, key: &K) -> Option<V> {
        let map = self.map.lock().ok()?;
        let e = map.get(key)?;
        (Instant::now().saturating_duration_since(e.asked) < self.ttl).then(|| e.value.clone())
    }

    /// Entries held (live or not yet dropped).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// No entries held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn refresh_failed(&self, key: &K) {
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
        c.insert("k", 1, t0);
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
        c.insert("k", false, t0);
        assert!(c.get_at(&"k", t0 + Duration::from_secs(8)).expect("served").refresh);
        c.refresh_failed(&"k");
        assert!(c.get_at(&"k", t0 + Duration::from_secs(9)).expect("served").refresh, "asked again");
        let t1 = t0 + Duration::from_secs(9);
        c.insert("k", true, t1);
        let hit = c.get_at(&"k", t1 + Duration::from_secs(9)).expect("the new value lives a full TTL");
        assert_eq!((hit.value, hit.refresh), (true, true));
    }

    #[test]
    fn an_answer_never_replaces_a_later_one() {
        let c = TtlCache::new(TTL, 10);
        let t0 = Instant::now();
        // A slow refresh sent at t0 returns after a newer review (sent at t0+1) was stored.
        c.insert("k", true, t0 + Duration::from_secs(1));
        c.insert("k", false, t0);
        assert_eq!(c.get_at(&"k", t0 + Duration::from_secs(2)).map(|h| h.value), Some(true));
        // Stamped when sent: an answer that took 6 s is served 4 s more, not 10.
        c.insert("slow", true, t0);
        assert!(c.get_at(&"slow", t0 + TTL).is_none(), "expires at TTL after it was asked");
    }

    #[tokio::test]
    async fn a_due_entry_is_refreshed_in_the_background_once() {
        let c = Arc::new(TtlCache::new(Duration::from_secs(40), 10));
        c.insert("k", 1, Instant::now().checked_sub(Duration::from_secs(35)).expect("the clock has run 35 s"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = c.get(&"k", || async move {
            let _ = rx.await;
            Ok::<_, ()>(2)
        });
        assert_eq!(served, Some(1), "the old value answers at once");
        assert_eq!(c.get(&"k", || async { Err::<i32, ()>(()) }), Some(1), "no second refresh while one runs");
        let _ = tx.send(());
        for _ in 0..100 {
            if c.get_at(&"k", Instant::now()).is_some_and(|h| h.value == 2) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the refreshed value never arrived");
    }

    #[test]
    fn bounded_expired_entries_go_first() {
        let c = TtlCache::new(TTL, 2);
        let t0 = Instant::now();
        c.insert("old", 1, t0);
        c.insert("new", 2, t0 + Duration::from_secs(9));
        c.insert("newest", 3, t0 + Duration::from_secs(11));
        let now = t0 + Duration::from_secs(12);
        assert!(c.get_at(&"old", now).is_none());
        assert_eq!(c.get_at(&"new", now).map(|h| h.value), Some(2), "a live entry survives while room is made");
        assert_eq!(c.get_at(&"newest", now).map(|h| h.value), Some(3));
        c.insert("fourth", 4, now);
        assert_eq!(c.get_at(&"fourth", now).map(|h| h.value), Some(4), "a full cache of live entries makes room");
        assert!(c.get_at(&"new", now).is_none(), "for the oldest");
        assert_eq!(c.get_at(&"newest", now).map(|h| h.value), Some(3), "and only the oldest");
    }

    #[test]
    fn a_flood_of_new_keys_evicts_the_oldest_quarter_at_a_time() {
        let c = TtlCache::new(TTL, 100);
        let t0 = Instant::now();
        c.insert("precious", 0, t0 + Duration::from_secs(5));
        for i in 0..99 {
            c.insert(format!("old-{i}").leak() as &str, i, t0 + Duration::from_millis(i));
        }
        assert_eq!(c.len(), 100);
        // 25 newer keys push out the 25 oldest, never the newer "precious" one.
        for i in 0..25 {
            c.insert(format!("new-{i}").leak() as &str, i, t0 + Duration::from_secs(6));
        }
        assert!(c.len() <= 100);
        let now = t0 + Duration::from_secs(7);
        assert_eq!(c.get_at(&"precious", now).map(|h| h.value), Some(0));
        assert!(c.get_at(&"old-0", now).is_none());
        assert!(c.get_at(&"old-98", now).is_some(), "only the oldest went");
    }

    #[test]
    fn peek_serves_live_entries_and_never_refreshes() {
        let c = TtlCache::new(TTL, 10);
        let old = Instant::now().checked_sub(Duration::from_secs(9)).expect("the clock has run 9 s");
        c.insert("due", 1, old);
        assert_eq!(c.peek(&"due"), Some(1));
        assert!(c.get_at(&"due", Instant::now()).expect("served").refresh, "peeking did not take the refresh");
        c.insert("gone", 2, old.checked_sub(TTL).expect("the clock has run 19 s"));
        assert_eq!(c.peek(&"gone"), None);
        assert_eq!(c.peek(&"missing"), None);
    }

    #[test]
    fn a_zero_sized_cache_holds_nothing() {
        let c = TtlCache::new(TTL, 0);
        c.insert("k", 1, Instant::now());
        assert!(c.is_empty());
        assert_eq!(c.peek(&"k"), None);
    }
}
