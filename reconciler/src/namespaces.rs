//! The managed namespaces (projects), from a metadata watch.
//!
//! Every session create and every session reconcile must know that its namespace is a managed
//! project. Asking the API server each time was one GET per command and per reconcile pass; this
//! cache answers the common case. It only ever says "yes": a namespace it does not hold (not
//! listed yet, just created) is still looked up, so its staleness can only be a namespace that
//! lost its label or was deleted milliseconds ago, and the write that follows fails then anyway.

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use crate::labels;

/// Managed namespaces by name.
#[derive(Clone)]
pub struct Projects {
    store: Store<PartialObjectMeta<Namespace>>,
}

impl Projects {
    /// Starts the watch; it stops on `stop`.
    pub fn start(client: kube::Client, stop: CancellationToken) -> Self {
        let (store, writer) = reflector::store();
        let managed = watcher::Config::default().labels(&format!("{}=true", labels::MANAGED));
        let stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client), managed).default_backoff().reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "namespace watch error; retrying");
                }
            }
        });
        Self { store }
    }

    /// True when the cache holds `name` as a managed namespace (false: look it up).
    pub fn known_managed(&self, name: &str) -> bool {
        self.store.get(&ObjectRef::new(name)).is_some_and(|ns| ns.metadata.deletion_timestamp.is_none())
    }
}
