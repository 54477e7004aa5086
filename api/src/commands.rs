//! Publishing commands and waiting for their results.
//!
//! The result subject is subscribed to BEFORE the command is published, so a fast result cannot
//! be missed. The publish is acknowledged by JetStream before anything is promised: no ack means
//! 503, never 202. Each accepted command is recorded (`ambient-api-commands`, with a TTL) with its
//! project, submitter and type, so that `GET /api/commands/{id}` answers its submitter only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use events::results::{CommandResult, Outcome};
use events::sealing::SealingSecretKey;
use events::signing::CommandSigner;
use events::{Command, CommandType, ProjectName};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::hex;
use crate::errors::ApiError;

/// Bucket of accepted commands (id → record).
pub const COMMANDS_BUCKET: &str = "ambient-api-commands";
/// Bucket of idempotency keys (hash of principal + key → command id).
pub const IDEMPOTENCY_BUCKET: &str = "ambient-api-idempotency";
/// How long an access-key token may wait in memory for its submitter after a 202.
const PENDING_KEY_TTL: Duration = Duration::from_secs(10 * 60);

/// What the api remembers about an accepted command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    /// Its project.
    pub project: String,
    /// The user name of who submitted it.
    pub submitter: String,
    /// Its CloudEvent type.
    #[serde(rename = "type")]
    pub ty: String,
}

/// How a mutation was answered. (Short-lived, one per request: its size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Submitted {
    /// The result arrived in time.
    Done {
        /// The result.
        result: CommandResult,
        /// For a key creation: the unsealed token (only in memory, returned once).
        token: Option<String>,
        /// True when this is the replay of an earlier request with the same Idempotency-Key.
        replayed: bool,
    },
    /// Accepted but not (yet) applied: 202 with `Location: /api/commands/{id}`.
    Accepted(Uuid),
}

/// Options of one submission.
#[derive(Default)]
pub struct SubmitOptions {
    /// `Prefer: respond-async`.
    pub respond_async: bool,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// For a key creation: the ephemeral key the token comes back sealed to.
    pub reply_key: Option<SealingSecretKey>,
}

/// The command bus as the api uses it.
pub struct Commands {
    nats: async_nats::Client,
    js: jetstream::Context,
    signer: CommandSigner,
    records: kv::Store,
    idempotency: kv::Store,
    result_timeout: Duration,
    pending_keys: Mutex<HashMap<Uuid, (Instant, SealingSecretKey)>>,
}

impl Commands {
    /// Opens (creating when absent) the api's own buckets.
    pub async fn new(
        nats: async_nats::Client,
        js: jetstream::Context,
        signer: CommandSigner,
        result_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let records = ensure_bucket(&js, COMMANDS_BUCKET, Duration::from_secs(24 * 3600)).await?;
        let idempotency = ensure_bucket(&js, IDEMPOTENCY_BUCKET, Duration::from_secs(24 * 3600)).await?;
        Ok(Self { nats, js, signer, records, idempotency, result_timeout, pending_keys: Mutex::new(HashMap::new()) })
    }

    /// Publishes `cmd` and waits (bounded) for its result.
    pub async fn submit(&self, cmd: Command, opts: SubmitOptions) -> Result<Submitted, ApiError> {
        if let Some(k) = &opts.idempotency_key {
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::bad_field("Idempotency-Key", "Idempotency-Key must be 1 to 255 characters"));
            }
            let key = hex(&Sha256::digest(format!("{}\0{}", cmd.principal.user, k).as_bytes()));
            match self.idempotency.create(&key, cmd.id.to_string().into_bytes().into()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    return self.replay(&key, &cmd, opts.respond_async).await;
                }
                Err(e) => return Err(ApiError::Unavailable(format!("the command bus is unavailable: {e}"))),
            }
        }
        // The key stays even when the publish fails: its ack may be what got lost, and a retry
        // re-publishes under this command's id (see `replay`), so it can never act twice.
        self.publish_and_wait(&cmd, opts.respond_async, opts.reply_key).await
    }

    async fn replay(&self, key: &str, cmd: &Command, respond_async: bool) -> Result<Submitted, ApiError> {
        let id = self
            .idempotency
            .get(key)
            .await
            .ok()
            .flatten()
            .and_then(|v| Uuid::parse_str(std::str::from_utf8(&v).ok()?).ok())
            .ok_or_else(|| ApiError::Unavailable("the idempotency record could not be read".into()))?;
        let record = self.record(id).await?;
        if record.as_ref().is_some_and(|r| r.ty != cmd.body.command_type().type_str() || r.project != cmd.project.as_str()) {
            return Err(ApiError::CommandFailed {
                code: 422,
                reason: "IdempotencyKeyReused".into(),
                message: "this Idempotency-Key was used for a different request".into(),
            });
        }
        if let Some(result) = self.stored_result(&cmd.project, id).await? {
            return Ok(Submitted::Done { result, token: None, replayed: true });
        }
        // No result yet: the first attempt may never have reached the bus (the api crashed or
        // lost NATS between recording the key and the publish's ack). Publish the same request
        // again under the FIRST attempt's id: JetStream drops it as a duplicate if the first
        // publish was stored (Nats-Msg-Id), and the reconciler applies a command id only once
        // anyway. Only an acknowledged publish may be answered 202.
        let mut again = cmd.clone();
        again.id = id;
        let out = self.publish_and_wait(&again, respond_async, None).await?;
        Ok(match out {
            Submitted::Done { result, token, .. } => Submitted::Done { result, token, replayed: true },
            accepted => accepted,
        })
    }

    async fn publish_and_wait(
        &self,
        cmd: &Command,
        respond_async: bool,
        reply_key: Option<SealingSecretKey>,
    ) -> Result<Submitted, ApiError> {
        let unavailable = |e: String| ApiError::Unavailable(format!("the command bus did not accept the command: {e}"));
        let record = CommandRecord {
            project: cmd.project.to_string(),
            submitter: cmd.principal.user.clone(),
            ty: cmd.body.command_type().type_str().into(),
        };
        let record = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.records.put(cmd.id.to_string(), record.into()).await.map_err(|e| unavailable(e.to_string()))?;
        let mut sub =
            self.nats.subscribe(events::subjects::result(&cmd.project, cmd.id)).await.map_err(|e| unavailable(e.to_string()))?;
        let out = events::wire::encode_command(cmd, &self.signer);
        let ack = async {
            self.js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        // From here the command may be stored even when the acknowledgement is lost: answer
        // with its id (its record exists, so its submitter can look the outcome up).
        let undetermined = |e: String| ApiError::Undetermined {
            message: format!("the command bus did not acknowledge the command: {e}"),
            command_id: cmd.id,
        };
        match tokio::time::timeout(Duration::from_secs(5), ack).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(undetermined(e)),
            Err(_) => return Err(undetermined("no acknowledgement from JetStream".into())),
        }
        metrics::counter!("ambient_api_commands_total", "type" => cmd.body.command_type().type_str()).increment(1);
        tracing::info!(command_id = %cmd.id, project = %cmd.project, r#type = cmd.body.command_type().type_str(), "command accepted");
        if respond_async {
            self.park_key(cmd.id, reply_key);
            return Ok(Submitted::Accepted(cmd.id));
        }
        match self.wait(&mut sub).await {
            Some(result) => {
                let token = reply_key.as_ref().and_then(|k| unseal_token(&result, k));
                Ok(Submitted::Done { result, token, replayed: false })
            }
            None => {
                self.park_key(cmd.id, reply_key);
                Ok(Submitted::Accepted(cmd.id))
            }
        }
    }

    async fn wait(&self, sub: &mut async_nats::Subscriber) -> Option<CommandResult> {
        let deadline = tokio::time::Instant::now() + self.result_timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next()).await.ok()??;
            match events::wire::decode_result(msg.headers.as_ref(), &msg.payload) {
                Ok(r) => return Some(r),
                Err(e) => tracing::warn!(error = %e, "undecodable result ignored"),
            }
        }
    }

    fn park_key(&self, id: Uuid, key: Option<SealingSecretKey>) {
        let Some(key) = key else { return };
        if let Ok(mut m) = self.pending_keys.lock() {
            m.retain(|_, (at, _)| at.elapsed() < PENDING_KEY_TTL);
            if m.len() < 10_000 {
                m.insert(id, (Instant::now(), key));
            }
        }
    }

    /// The record of command `id`.
    pub async fn record(&self, id: Uuid) -> Result<Option<CommandRecord>, ApiError> {
        let v = self
            .records
            .get(id.to_string())
            .await
            .map_err(|e| ApiError::Unavailable(format!("the command bus is unavailable: {e}")))?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The stored result of command `id`, if any yet.
    pub async fn stored_result(&self, project: &ProjectName, id: Uuid) -> Result<Option<CommandResult>, ApiError> {
        let stream = self
            .js
            .get_stream(events::streams::RESULTS_STREAM)
            .await
            .map_err(|e| ApiError::Unavailable(format!("the command bus is unavailable: {e}")))?;
        match stream.get_last_raw_message_by_subject(&events::subjects::result(project, id)).await {
            Ok(m) => Ok(events::wire::decode_result(Some(&m.headers), &m.payload).ok()),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ApiError::Unavailable(format!("the command bus is unavailable: {e}"))),
        }
    }

    /// The parked token of a key creation answered 202, opened at most once.
    pub fn take_parked_token(&self, id: Uuid, result: &CommandResult) -> Option<String> {
        let (at, key) = self.pending_keys.lock().ok()?.remove(&id)?;
        if at.elapsed() > PENDING_KEY_TTL {
            return None;
        }
        unseal_token(result, &key)
    }

    /// Whether the bus answers.
    pub fn connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

fn unseal_token(result: &CommandResult, key: &SealingSecretKey) -> Option<String> {
    match &result.outcome {
        Outcome::Succeeded { sealed_token: Some(b), .. } => key.open(b).ok().and_then(|t| String::from_utf8(t).ok()),
        _ => None,
    }
}

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

/// A result as JSON for clients: the sealed token is never shown.
pub fn result_json(r: &CommandResult) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("sealedToken");
    }
    v
}

/// Every command type string (for docs and checks).
pub fn command_types() -> Vec<&'static str> {
    CommandType::ALL.iter().map(|t| t.type_str()).collect()
}
