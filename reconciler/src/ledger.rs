//! The exactly-once ledger: AMBIENT_RESULTS keeps one result per command subject. A command
//! whose result exists was applied (or refused) already and is only acknowledged again.

use std::sync::Arc;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use tokio::sync::OnceCell;
use uuid::Uuid;

use events::results::CommandResult;
use events::streams::RESULTS_STREAM;
use events::{ProjectName, subjects};

use crate::error::ApplyError;

/// Reads and writes results.
#[derive(Clone)]
pub struct Ledger {
    js: jetstream::Context,
    // Looked up once: every command reads the ledger, and a stream lookup is a round trip.
    results: Arc<OnceCell<jetstream::stream::Stream>>,
}

impl Ledger {
    /// A ledger on the results stream of `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js, results: Arc::new(OnceCell::new()) }
    }

    /// True when a result of the command is recorded.
    pub async fn has_result(&self, project: &ProjectName, id: Uuid) -> Result<bool, ApplyError> {
        let stream = self
            .results
            .get_or_try_init(|| self.js.get_stream(RESULTS_STREAM))
            .await
            .map_err(|e| ApplyError::transient("results stream", e))?;
        match stream.direct_get_last_for_subject(subjects::result(project, id)).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
            Err(e) => Err(ApplyError::transient("result lookup", e)),
        }
    }

    /// Publishes a result and waits until JetStream stored it (a duplicate is fine).
    pub async fn publish(&self, result: &CommandResult, traceparent: Option<&str>) -> Result<(), ApplyError> {
        let out = events::wire::encode_result(result, traceparent);
        self.js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .map_err(|e| ApplyError::transient("publish result", e))?
            .await
            .map_err(|e| ApplyError::transient("result not stored", e))?;
        metrics::counter!("reconciler_results_published_total", "outcome" => result.type_str()).increment(1);
        Ok(())
    }
}
