//! The projector's side of NATS: publishing status events (awaiting the JetStream ack) and the
//! read-model buckets, both retried until they succeed (a status event is never dropped).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use events::streams::{ACCESS_BUCKET, PROJECTS_BUCKET, SESSIONS_BUCKET, STATUS_STREAM};
use events::{Cause, ProjectName, StatusEvent, StatusKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::model::{ObjKey, Projected};

/// A bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A read-model bucket could not be opened or read.
    #[error("read-model bucket {bucket}: {cause}")]
    Bucket {
        /// Bucket.
        bucket: &'static str,
        /// What went wrong.
        #[source]
        cause: Cause,
    },
    /// The status stream could not be read.
    #[error("status stream: {0}")]
    Status(#[source] Cause),
    /// Shutting down before the operation could complete.
    #[error("shutting down")]
    Cancelled,
}

/// Publishes status events and keeps the read model.
pub struct Bus {
    js: jetstream::Context,
    buckets: BTreeMap<&'static str, kv::Store>,
    cancel: CancellationToken,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Header marking a KV delete or purge.
const KV_OPERATION: &str = "KV-Operation";

impl Bus {
    /// Opens the read-model buckets (created by the bootstrap).
    pub async fn open(js: jetstream::Context, cancel: CancellationToken) -> Result<Self, BusError> {
        let mut buckets = BTreeMap::new();
        for b in [PROJECTS_BUCKET, SESSIONS_BUCKET, ACCESS_BUCKET] {
            let store = js.get_key_value(b).await.map_err(|e| BusError::Bucket { bucket: b, cause: e.into() })?;
            buckets.insert(b, store);
        }
        Ok(Bus { js, buckets, cancel })
    }

    /// Every value of the read model (the last projected state), by object.
    ///
    /// Read with a *named* push consumer (last message per key, delivered to an inbox) rather
    /// than `Store::keys()`: the deploy/ NATS permissions allow creating named consumers on
    /// the bucket streams (`$JS.API.CONSUMER.CREATE.KV_<bucket>.>`) and receiving on
    /// `_INBOX.>`, not the unnamed consumer `keys()` creates nor pulling.
    pub async fn load(&self) -> Result<BTreeMap<ObjKey, Projected>, BusError> {
        let mut out = BTreeMap::new();
        for &bucket in self.buckets.keys() {
            let err = |e: Cause| BusError::Bucket { bucket, cause: e };
            let stream = self.js.get_stream(format!("KV_{bucket}")).await.map_err(|e| err(e.into()))?;
            let name = format!("projector-load-{}", uuid::Uuid::new_v4().simple());
            let consumer = stream
                .create_consumer(consumer::push::Config {
                    name: Some(name.clone()),
                    deliver_subject: self.js.client().new_inbox(),
                    filter_subject: format!("$KV.{bucket}.>"),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(|e| err(e.into()))?;
            let mut remaining = consumer.cached_info().num_pending;
            let prefix = format!("$KV.{bucket}.");
            if remaining > 0 {
                let mut messages = consumer.messages().await.map_err(|e| err(e.into()))?;
                while remaining > 0 {
                    // A stall is an error: loading less than the read model holds would
                    // re-announce objects as new.
                    let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                        Ok(Some(Ok(m))) => m,
                        Ok(Some(Err(e))) => return Err(err(e.into())),
                        Ok(None) => return Err(err("read-model load ended early".into())),
                        Err(_) => {
                            return Err(err(format!("read-model load stalled with {remaining} values left").into()));
                        }
                    };
                    remaining = m.info().map(|i| i.pending).unwrap_or(0);
                    let op = m.headers.as_ref().and_then(|h| h.get(KV_OPERATION)).map(|v| v.as_str().to_string());
                    if matches!(op.as_deref(), Some("DEL" | "PURGE")) {
                        continue;
                    }
                    let Some(key) = m.subject.as_str().strip_prefix(&prefix) else { continue };
                    let Some(obj) = ObjKey::from_kv(bucket, key) else {
                        tracing::warn!(bucket, key, "ignoring a read-model key the projector does not own");
                        continue;
                    };
                    match serde_json::from_slice::<Projected>(&m.payload) {
                        Ok(p) => {
                            out.insert(obj, p);
                        }
                        // An unreadable value is re-projected from the cluster as if new.
                        Err(e) => tracing::warn!(bucket, key, error = %e, "unreadable read-model value"),
                    }
                }
            }
            let _ = stream.delete_consumer(&name).await;
        }
        Ok(out)
    }

    async fn retry<T, E: std::fmt::Display, F, Fut>(&self, what: &str, mut op: F) -> Result<T, BusError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    metrics::counter!("projector_bus_errors_total", "op" => what.to_string()).increment(1);
                    tracing::warn!(op = what, error = %e, retry_in_ms = delay.as_millis() as u64, "bus operation failed; retrying");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(BusError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// Publishes one status event and waits for JetStream to store it (a duplicate id is
    /// acknowledged without storing it again). Returns its stream sequence (a duplicate's is
    /// the stored original's), or `None` when the event was skipped.
    pub async fn publish(&self, ev: &StatusEvent) -> Result<Option<u64>, BusError> {
        let out = match events::wire::encode_status(ev) {
            Ok(o) => o,
            Err(e) => {
                // Names are validated before a view is built; this is a bug, not a bus fault.
                tracing::error!(event_id = %ev.id, error = %e, "status event has no valid subject; skipped");
                return Ok(None);
            }
        };
        let ack = self
            .retry("publish", || async {
                let fut = self
                    .js
                    .publish_with_headers(out.subject.clone(), out.headers.clone(), out.payload.clone())
                    .await
                    .map_err(Cause::from)?;
                fut.await.map_err(Cause::from)
            })
            .await?;
        metrics::counter!("projector_events_emitted_total", "type" => ev.body.type_str()).increment(1);
        if ack.duplicate {
            metrics::counter!("projector_events_duplicate_total", "type" => ev.body.type_str()).increment(1);
        }
        tracing::info!(
            event_id = %ev.id,
            event_type = ev.body.type_str(),
            project = %ev.project,
            name = %ev.name,
            seq = ack.sequence,
            duplicate = ack.duplicate,
            "status event published"
        );
        Ok(Some(ack.sequence))
    }

    /// Purges the status events of project `project` stored before sequence `below` (all of
    /// them with `None`): a deleted project's history must not reach whoever creates the
    /// name next. Idempotent; retried until it succeeds.
    pub async fn purge_project(&self, project: &ProjectName, below: Option<u64>) -> Result<u64, BusError> {
        let filter = events::subjects::status_of_project(project);
        let purged = self
            .retry("purge", || async {
                let stream = self.js.get_stream_no_info(STATUS_STREAM).await.map_err(Cause::from)?;
                let r = match below {
                    Some(seq) => stream.purge().filter(filter.clone()).sequence(seq).await,
                    None => stream.purge().filter(filter.clone()).await,
                };
                r.map(|r| r.purged).map_err(Cause::from)
            })
            .await?;
        metrics::counter!("projector_status_purged_total").increment(purged);
        tracing::info!(project = %project, purged, below, "status history of a gone project purged");
        Ok(purged)
    }

    /// The projects that have a project subject in the status stream (`ambient.status.<p>.project.<p>`).
    pub async fn projects_with_status(&self) -> Result<Vec<String>, BusError> {
        let err = |e: Cause| BusError::Status(e);
        let stream = self.js.get_stream_no_info(STATUS_STREAM).await.map_err(|e| err(e.into()))?;
        let mut info = stream
            .info_builder()
            .subjects(format!("{}.*.{}.*", events::subjects::STATUS, StatusKind::Project.as_str()))
            .fetch()
            .await
            .map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        while let Some(entry) = info.next().await {
            let (subject, _count) = entry.map_err(|e| err(e.into()))?;
            let tokens: Vec<&str> = subject.split('.').collect();
            if let [_, _, p, _, n] = tokens.as_slice()
                && p == n
            {
                out.push(p.to_string());
            }
        }
        Ok(out)
    }

    /// The sequence of the last status event of `project`'s own subject if it is its
    /// deletion tombstone.
    pub async fn last_tombstone(&self, project: &ProjectName) -> Result<Option<u64>, BusError> {
        let subject = events::subjects::status(project, StatusKind::Project, project.as_str())
            .map_err(|e| BusError::Status(e.into()))?;
        self.retry("last-status", || async {
            let stream = self.js.get_stream_no_info(STATUS_STREAM).await.map_err(Cause::from)?;
            match stream.direct_get_last_for_subject(subject.clone()).await {
                Ok(m) => Ok(events::wire::decode_status(Some(&m.headers), &m.payload)
                    .ok()
                    .filter(|ev| matches!(ev.body, events::StatusBody::ProjectDeleted(_)))
                    .map(|_| m.sequence)),
                Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => Ok(None),
                Err(e) => Err(Cause::from(e)),
            }
        })
        .await
    }

    /// Writes (or, with `None`, deletes) the read-model value of `key`.
    pub async fn store(&self, key: &ObjKey, value: Option<&Projected>) -> Result<(), BusError> {
        let bucket = key.bucket();
        let Some(store) = self.buckets.get(bucket) else {
            return Err(BusError::Bucket { bucket, cause: "not opened".into() });
        };
        let k = key.kv_key();
        match value {
            Some(v) => {
                let bytes = bytes::Bytes::from(serde_json::to_vec(v).unwrap_or_default());
                self.retry("kv-put", || store.put(k.as_str(), bytes.clone())).await?;
            }
            None => {
                self.retry("kv-delete", || store.delete(k.as_str())).await?;
            }
        }
        Ok(())
    }
}
