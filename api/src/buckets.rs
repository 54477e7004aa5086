//! The NATS KV buckets the api owns (command records, idempotency keys, parked keys, key usage,
//! message budgets) are opened in one way: created when absent, and brought to the configured
//! replica count (`--stream-replicas`, like every stream) when present, so that losing one NATS
//! server of a cluster loses none of them.

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
    Ok(events::streams::ensure_bucket(js, bucket_config(bucket, ttl, replicas)).await?.0)
}
