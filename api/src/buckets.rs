//! The NATS KV buckets the api owns (command records, idempotency keys, parked keys, message
//! budgets) are opened, and created when absent, in one way.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

/// Opens `bucket`, creating it (file storage, history 1, `ttl`) when absent.
pub async fn ensure_bucket(js: &jetstream::Context, bucket: &str, ttl: Duration) -> anyhow::Result<kv::Store> {
    if let Ok(s) = js.get_key_value(bucket).await {
        return Ok(s);
    }
    Ok(js
        .create_key_value(kv::Config {
            bucket: bucket.into(),
            description: "owned by the api".into(),
            history: 1,
            max_age: ttl,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?)
}
