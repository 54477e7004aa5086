//! Level-triggered controllers (kube-runtime): everything they do is derived from the cluster's
//! current state on every pass, so a restart resumes exactly where the cluster is.

pub mod limits;
pub mod project;
pub mod session;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

use crate::error::ApplyError;

/// A reconcile pass failed; it is retried after a short delay.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A shared apply helper failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A watch cache was shut down (the reconciler is stopping).
    #[error("a watch cache closed")]
    CacheClosed,
}

/// A watch and its cache, keeping of each object only what `trim` leaves. Controllers read a few
/// fields; the rest (managedFields above all) was most of the reconciler's memory at 10 000
/// projects. Callers pick `.applied_objects()` (the watched kind) or `.touched_objects()`.
pub fn trimmed_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    (store, watcher(api, config).default_backoff().modify(trim).reflect(writer))
}

/// Delay before a failed reconcile is retried.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// Longest wait between the retries of an object whose passes keep failing.
pub const MAX_ERROR_REQUEUE: Duration = Duration::from_secs(60);

/// Per-object retry delays of failed passes: each failure in a row doubles the wait (from
/// [`ERROR_REQUEUE`] to [`MAX_ERROR_REQUEUE`]), stretched by 0–50 % depending on the object, so
/// that while the API server is unreachable thousands of objects neither retry all at once nor
/// every few seconds. A pass that succeeds forgets the object. A watch event still triggers a
/// pass at once (a relist after an outage wakes every object); this only paces retries.
#[derive(Debug, Default)]
pub struct Retries(Mutex<HashMap<String, u32>>);

impl Retries {
    /// Records one more failure of `key`; how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let failures = match self.0.lock() {
            Ok(mut m) => {
                let n = m.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let doubled = ERROR_REQUEUE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_ERROR_REQUEUE);
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        doubled.mul_f64(1.0 + (h.finish() % 1000) as f64 / 2000.0)
    }

    /// `key`'s pass succeeded.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

/// Passes at once of each per-project controller (namespaces, ProjectSettings, project limits).
/// Unbounded, a restart with 10 000 projects started 10 000 passes together: 30 000 requests
/// in flight and about 1 GB of reconciler memory (the benchmark's scale run).
pub const PROJECT_WORKERS: u16 = 16;

/// The controller configuration of the per-project controllers.
pub fn project_workers() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(PROJECT_WORKERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_per_object_and_reset_on_success() {
        let r = Retries::default();
        let first = r.failed("p/a");
        assert!(first >= ERROR_REQUEUE && first <= ERROR_REQUEUE.mul_f64(1.5), "{first:?}");
        let second = r.failed("p/a");
        assert_eq!(second, first * 2, "same object, same spread, twice the wait");
        for _ in 0..20 {
            r.failed("p/a");
        }
        let capped = r.failed("p/a");
        assert!(capped >= MAX_ERROR_REQUEUE && capped <= MAX_ERROR_REQUEUE.mul_f64(1.5), "{capped:?}");
        r.succeeded("p/a");
        assert_eq!(r.failed("p/a"), first, "a success starts over");
        // Objects failing together do not all retry at the same instant.
        let spread: std::collections::BTreeSet<Duration> =
            (0..50).map(|i| Retries::default().failed(&format!("p/s{i}"))).collect();
        assert!(spread.len() > 40, "{} distinct delays of 50", spread.len());
    }
}
