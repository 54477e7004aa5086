//! The NATS KV buckets the api owns (`events::streams::api_buckets`: command records,
//! idempotency keys, parked keys, key usage, message budgets) are opened in one way: created
//! when absent with the configured replicas (`--stream-replicas`, like every stream), so that
//! losing one NATS server of a cluster loses none of them. An existing bucket with other
//! replicas is raised by the reconciler (the api's NATS user may not change a stream).

use std::time::Duration;

use async_nats::jetstream::{self, kv};

/// The configuration of the api's bucket `bucket`: file storage, history 1, entries expire
/// after `ttl` (never when zero), `replicas` copies.
pub fn bucket_config(bucket: &str, ttl: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.into(),
        description: "owned by the api".into(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Opens `bucket` as [`bucket_config`] says (`events::streams::ensure_bucket`: created when
/// absent, its replicas updated when they differ; every replica does this on start).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let (store, change) =
        events::streams::ensure_bucket(js, bucket_config(bucket, ttl, replicas), events::streams::Update::Report)
            .await?;
    if let events::streams::Change::Differs(have) = change {
        // Only the reconciler's NATS user may change a stream: it raises these at its start.
        tracing::warn!(
            bucket,
            have,
            want = replicas,
            "bucket replicas differ; the reconciler brings them to --stream-replicas"
        );
    }
    Ok(store)
}
