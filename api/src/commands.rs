//! Publishing commands and waiting for their results.
//!
//! The result subject is subscribed to BEFORE the command is published, so a fast result cannot
//! be missed. The publish is acknowledged by JetStream before anything is promised: no ack means
//! 503, never 202. Each accepted command is recorded (`ambient-api-commands`, with a TTL) with its
//! project, submitter and type, so that `GET /api/commands/{id}` answers its submitter only.
//!
//! Before anything is recorded, keyed or published, a command must fit its bounds
//! (`events::limits`: 422 naming the field, 413 for the whole command) and its project's backlog
//! limits: the pending commands of the project (read from the commands stream's per-subject
//! counts, which hold pending commands only) may not exceed a count and a charged byte size.
//! A project at its limit gets 429 with `Retry-After`; other projects are unaffected. Admission
//! and publish are serialized per project within this process, so parallel requests cannot all
//! pass the check at once (api replicas can each overshoot by their in-flight publishes; the
//! stream's per-subject cap is the backstop).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use events::results::{CommandResult, Outcome, ResourceRef};
use events::signing::CommandSigner;
use events::{Command, CommandType, ProjectName};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::hex;
use crate::buckets::ensure_bucket;
use crate::errors::{ApiError, Cause};
use crate::parked::{ParkedKeys, Reply};

/// Bucket of accepted commands (id → record).
pub const COMMANDS_BUCKET: &str = events::streams::api_buckets::COMMANDS;
/// Bucket of idempotency keys (hash of principal + key → command id).
pub const IDEMPOTENCY_BUCKET: &str = events::streams::api_buckets::IDEMPOTENCY;
/// Locks that serialize admission and publish per project (by hash; bounded memory).
const ADMISSION_SHARDS: usize = 256;

/// Per-project limits of pending (accepted, not yet applied) commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogLimits {
    /// Pending commands.
    pub max_commands: u64,
    /// Pending bytes, each command charged its type's bound (`events::limits::charge_bytes`).
    pub max_bytes: u64,
}

/// A project's pending commands, as the commands stream counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Pending commands.
    pub commands: u64,
    /// Their charged bytes.
    pub bytes: u64,
}

impl Backlog {
    /// The backlog from the stream's per-subject counts of one project (stored subjects,
    /// `ambient.cmd.<partition>.<project>.<kind>.<action>`). A subject that names no known
    /// command type is charged as large.
    pub fn from_counts<'a>(counts: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut b = Backlog::default();
        for (subject, n) in counts {
            let charge = events::subjects::parse_command(subject)
                .map(|c| events::limits::charge_bytes(c.ty))
                .unwrap_or_else(|| events::limits::charge_bytes(CommandType::SessionCreate));
            b.commands += n;
            b.bytes += n * charge as u64;
        }
        b
    }

    /// Whether one more command of type `ty` fits; otherwise why not.
    pub fn admit(&self, limits: &BacklogLimits, ty: CommandType) -> Result<(), String> {
        if self.commands + 1 > limits.max_commands {
            return Err(format!(
                "the project has {} pending commands, its limit; retry once some are applied",
                self.commands
            ));
        }
        if self.bytes + events::limits::charge_bytes(ty) as u64 > limits.max_bytes {
            return Err(format!(
                "the project's pending commands hold {} of its {} bytes; retry once some are applied",
                self.bytes, limits.max_bytes
            ));
        }
        Ok(())
    }

    /// Whether one more command of type `ty` fits in a stream holding `stream_bytes` of
    /// `capacity`: in its last tenth only projects with little pending (under 1/512 of it) may
    /// add more, so whoever filled it waits first and the other tenants keep the rest.
    /// Commands that stop or take something away (revoke a key or a grant, stop or delete a
    /// session, delete the project) are always admitted: an admin must be able to revoke a
    /// leaked key while others keep the stream full.
    pub fn admit_near_full(&self, stream_bytes: u64, capacity: u64, ty: CommandType) -> Result<(), String> {
        let remedial = matches!(
            ty,
            CommandType::KeyRevoke
                | CommandType::PermissionRevoke
                | CommandType::SessionStop
                | CommandType::SessionDelete
                | CommandType::ProjectDelete
        );
        if remedial {
            return Ok(());
        }
        let charge = events::limits::charge_bytes(ty) as u64;
        let reserve_from = capacity - capacity / 10;
        if capacity > 0
            && stream_bytes.saturating_add(charge) > reserve_from
            && self.bytes.saturating_add(charge) > capacity / 512
        {
            return Err(format!(
                "the command store shared by all projects is nearly full and this project has {} pending commands; retry once some are applied",
                self.commands
            ));
        }
        Ok(())
    }

    /// Seconds a client should wait before retrying (the backlog drains at tens to hundreds of
    /// commands a second).
    pub fn retry_after_secs(&self) -> u64 {
        (self.commands / 100).clamp(1, 30)
    }
}

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

/// How a mutation was answered (a command that failed is an [`ApiError::CommandFailed`]).
pub enum Mutation {
    /// Applied in time: the object written, and for a key creation the unsealed token (taken
    /// from its parking place: shown once).
    Applied {
        /// The object the command wrote.
        resource: ResourceRef,
        /// For a key creation: the token.
        token: Option<String>,
        /// True when this is the replay of an earlier request with the same Idempotency-Key.
        replayed: bool,
    },
    /// Accepted but not (yet) applied: 202 with `Location: /api/commands/{id}`.
    Accepted(Uuid),
}

impl Mutation {
    /// The answer a command's result gives.
    fn of(result: CommandResult, token: Option<String>, replayed: bool) -> Result<Self, ApiError> {
        match result.outcome {
            Outcome::Succeeded { resource, .. } => Ok(Mutation::Applied { resource, token, replayed }),
            Outcome::Failed { code, reason, message } => {
                Err(ApiError::CommandFailed { code, reason: format!("{reason:?}"), message })
            }
        }
    }
}

/// Options of one submission.
#[derive(Default)]
pub struct SubmitOptions {
    /// `Prefer: respond-async`.
    pub respond_async: bool,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// For a key creation: the ephemeral key the token comes back sealed to.
    pub reply: Option<Reply>,
}

/// The command bus as the api uses it.
pub struct Commands {
    nats: async_nats::Client,
    js: jetstream::Context,
    signer: CommandSigner,
    records: kv::Store,
    idempotency: kv::Store,
    result_timeout: Duration,
    key_result_timeout: Duration,
    parked: ParkedKeys,
    backlog: BacklogLimits,
    partitions: u32,
    admission: Vec<tokio::sync::Mutex<()>>,
    /// Keyed per process, so that nobody can pick a project name that shares another
    /// project's admission lock.
    admission_hasher: std::collections::hash_map::RandomState,
}

impl Commands {
    /// Opens (creating when absent) the api's own buckets.
    pub async fn new(
        nats: async_nats::Client,
        js: jetstream::Context,
        signer: CommandSigner,
        timeouts: (Duration, Duration),
        parked: ParkedKeys,
        backlog: BacklogLimits,
        bus: &events::streams::BusConfig,
    ) -> anyhow::Result<Self> {
        let (result_timeout, key_result_timeout) = timeouts;
        let records = ensure_bucket(&js, COMMANDS_BUCKET, Duration::from_secs(24 * 3600), bus.replicas).await?;
        let idempotency = ensure_bucket(&js, IDEMPOTENCY_BUCKET, Duration::from_secs(24 * 3600), bus.replicas).await?;
        let admission = (0..ADMISSION_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self {
            nats,
            js,
            signer,
            records,
            idempotency,
            result_timeout,
            key_result_timeout,
            parked,
            backlog,
            partitions: bus.partitions,
            admission,
            admission_hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Publishes `cmd` and waits (bounded) for its result.
    pub async fn submit(&self, cmd: Command, opts: SubmitOptions) -> Result<Mutation, ApiError> {
        // A command over its bounds is refused before it costs anything shared.
        events::limits::check_command(&cmd)?;
        let key = match &opts.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 255 => {
                return Err(ApiError::bad_field("Idempotency-Key", "Idempotency-Key must be 1 to 255 characters"));
            }
            Some(k) => Some(hex(&Sha256::digest(format!("{}\0{}", cmd.principal.user, k).as_bytes()))),
            None => None,
        };
        // A retry of a request already keyed is answered from the first attempt, even while the
        // project's backlog is full (only a re-publish needs admission, see `replay`).
        if let Some(key) = &key
            && matches!(self.idempotency.get(key).await, Ok(Some(_)))
        {
            return self.replay(key, &cmd, opts.respond_async).await;
        }
        let guard = self.admit(&cmd).await?;
        if let Some(key) = &key {
            match self.idempotency.create(key, cmd.id.to_string().into_bytes().into()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    drop(guard);
                    return self.replay(key, &cmd, opts.respond_async).await;
                }
                Err(e) => return Err(ApiError::unavailable_from("the command bus is unavailable", e)),
            }
        }
        // The key stays even when the publish fails: its ack may be what got lost, and a retry
        // re-publishes under this command's id (see `replay`), so it can never act twice.
        self.publish_and_wait(&cmd, opts.respond_async, opts.reply.as_ref(), guard).await
    }

    /// Admits one more command of `cmd`'s project, or refuses it: 429 when the project's backlog
    /// is at a limit, 503 when the stream cannot take it (full, or the reconciler's consumers do
    /// not exist yet: interest retention would drop the command). Returns the project's
    /// admission lock, held until the publish is acknowledged.
    async fn admit(&self, cmd: &Command) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let shard = {
            use std::hash::BuildHasher as _;
            (self.admission_hasher.hash_one(cmd.project.as_str()) % ADMISSION_SHARDS as u64) as usize
        };
        let guard = self.admission[shard].lock().await;
        let unavailable = |e: Cause| ApiError::unavailable_from("the command bus is unavailable", e);
        let stream =
            self.js.get_stream_no_info(events::streams::COMMANDS_STREAM).await.map_err(|e| unavailable(e.into()))?;
        let filter = format!("{}.*.{}.>", events::subjects::COMMANDS, cmd.project);
        let mut info = stream.info_with_subjects(&filter).await.map_err(|e| unavailable(e.into()))?;
        if info.info.state.consumer_count < self.partitions as usize {
            return Err(ApiError::unavailable("the command consumers do not exist yet (has the reconciler started?)"));
        }
        let max = info.info.config.max_bytes;
        if max > 0 && info.info.state.bytes + events::limits::charge_bytes(cmd.body.command_type()) as u64 > max as u64
        {
            return Err(ApiError::unavailable("the command stream is full; retry later"));
        }
        let mut counts = Vec::new();
        while let Some(item) = info.next().await {
            let (subject, n) = item.map_err(|e| unavailable(e.into()))?;
            counts.push((subject, n as u64));
        }
        let backlog = Backlog::from_counts(counts.iter().map(|(s, n)| (s.as_str(), *n)));
        let capacity = u64::try_from(max).unwrap_or(0);
        let admitted = backlog
            .admit(&self.backlog, cmd.body.command_type())
            .and_then(|()| backlog.admit_near_full(info.info.state.bytes, capacity, cmd.body.command_type()));
        if let Err(why) = admitted {
            metrics::counter!("ambient_api_commands_refused_backlog_total").increment(1);
            tracing::info!(project = %cmd.project, pending = backlog.commands, bytes = backlog.bytes, "project backlog full");
            return Err(ApiError::Backlog { message: why, retry_after_secs: backlog.retry_after_secs() });
        }
        Ok(guard)
    }

    async fn replay(&self, key: &str, cmd: &Command, respond_async: bool) -> Result<Mutation, ApiError> {
        let id = self
            .idempotency
            .get(key)
            .await
            .ok()
            .flatten()
            .and_then(|v| Uuid::parse_str(std::str::from_utf8(&v).ok()?).ok())
            .ok_or_else(|| ApiError::unavailable("the idempotency record could not be read"))?;
        let record = self.record(id).await?;
        if record
            .as_ref()
            .is_some_and(|r| r.ty != cmd.body.command_type().type_str() || r.project != cmd.project.as_str())
        {
            return Err(ApiError::CommandFailed {
                code: 422,
                reason: "IdempotencyKeyReused".into(),
                message: "this Idempotency-Key was used for a different request".into(),
            });
        }
        if let Some(result) = self.stored_result(&cmd.project, id).await? {
            // A key creation's token goes to whichever request asks first, this retry too.
            let token = self.parked.take(id, &result).await;
            return Mutation::of(result, token, true);
        }
        // No result yet: the first attempt may never have reached the bus (the api crashed or
        // lost NATS between recording the key and the publish's ack). Publish the same request
        // again under the FIRST attempt's id: JetStream drops it as a duplicate if the first
        // publish was stored (Nats-Msg-Id), and the reconciler applies a command id only once
        // anyway. Only an acknowledged publish may be answered 202.
        let mut again = cmd.clone();
        again.id = id;
        let guard = self.admit(&again).await?;
        let out = self.publish_and_wait(&again, respond_async, None, guard).await?;
        Ok(match out {
            Mutation::Applied { resource, token, .. } => Mutation::Applied { resource, token, replayed: true },
            accepted => accepted,
        })
    }

    async fn publish_and_wait(
        &self,
        cmd: &Command,
        respond_async: bool,
        reply: Option<&Reply>,
        admitted: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Mutation, ApiError> {
        let unavailable = |e: Cause| ApiError::unavailable_from("the command bus did not accept the command", e);
        let record = CommandRecord {
            project: cmd.project.to_string(),
            submitter: cmd.principal.user.clone(),
            ty: cmd.body.command_type().type_str().into(),
        };
        let record = serde_json::to_vec(&record).map_err(ApiError::internal)?;
        self.records.put(cmd.id.to_string(), record.into()).await.map_err(|e| unavailable(e.into()))?;
        // Parked before the publish: once the command may exist, so may a way to its token.
        if let Some(reply) = reply {
            self.parked.park(cmd.id, reply).await.map_err(unavailable)?;
        }
        let mut sub = self
            .nats
            .subscribe(events::subjects::result(&cmd.project, cmd.id))
            .await
            .map_err(|e| unavailable(e.into()))?;
        let out = events::wire::encode_command(cmd, &self.signer);
        // Announced to every replica once stored, for the reads to show (crate::pending).
        let announcement = crate::pending::shows(cmd.body.command_type())
            .then(|| {
                crate::pending::announcement_subject(&out.subject)
                    .map(|s| (s, out.headers.clone(), out.payload.clone()))
            })
            .flatten();
        let ack = async {
            self.js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(Cause::from)?
                .await
                .map_err(Cause::from)
        };
        // The server's own caps refuse a command before storing it: not undetermined.
        let refused = |e: &Cause| -> Option<ApiError> {
            let e = e.to_string();
            if e.contains("maximum messages per subject") {
                Some(ApiError::Backlog {
                    message: "the project has too many pending commands of this type".into(),
                    retry_after_secs: 5,
                })
            } else if e.contains("maximum bytes") || e.contains("insufficient resources") {
                Some(ApiError::unavailable("the command stream is full; retry later"))
            } else if e.contains("message size exceeds maximum") {
                Some(ApiError::TooLarge("the command is larger than the command stream accepts".into()))
            } else {
                None
            }
        };
        // From here the command may be stored even when the acknowledgement is lost: answer
        // with its id (its record exists, so its submitter can look the outcome up).
        let undetermined = |e: Cause| ApiError::Undetermined {
            message: format!("the command bus did not acknowledge the command: {e}"),
            command_id: cmd.id,
        };
        match tokio::time::timeout(Duration::from_secs(5), ack).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let Some(refusal) = refused(&e) else { return Err(undetermined(e)) };
                // Never stored: no token will ever come, and a retry must not wait for one.
                if reply.is_some() {
                    self.parked.forget(cmd.id).await;
                }
                return Err(refusal);
            }
            Err(_) => return Err(undetermined("no acknowledgement from JetStream".into())),
        }
        drop(admitted);
        if let Some((subject, headers, payload)) = announcement
            && let Err(e) = self.nats.publish_with_headers(subject, headers, payload).await
        {
            tracing::warn!(command_id = %cmd.id, error = %e, "announcing an accepted command failed: reads show it once applied");
        }
        metrics::counter!("ambient_api_commands_total", "type" => cmd.body.command_type().type_str()).increment(1);
        tracing::info!(command_id = %cmd.id, project = %cmd.project, r#type = cmd.body.command_type().type_str(), "command accepted");
        if respond_async {
            return Ok(Mutation::Accepted(cmd.id));
        }
        // A key's token is shown once, to this answer if it can be: wait longer for it.
        let timeout = if reply.is_some() { self.key_result_timeout } else { self.result_timeout };
        match self.wait(&mut sub, timeout).await {
            Some(result) => {
                let token = match reply {
                    Some(_) => self.parked.take(cmd.id, &result).await,
                    None => None,
                };
                Mutation::of(result, token, false)
            }
            None => Ok(Mutation::Accepted(cmd.id)),
        }
    }

    async fn wait(&self, sub: &mut async_nats::Subscriber, timeout: Duration) -> Option<CommandResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next()).await.ok()??;
            match events::wire::decode_result(msg.headers.as_ref(), &msg.payload) {
                Ok(r) => return Some(r),
                Err(e) => tracing::warn!(error = %e, "undecodable result ignored"),
            }
        }
    }

    /// The record of command `id`.
    pub async fn record(&self, id: Uuid) -> Result<Option<CommandRecord>, ApiError> {
        let v = self
            .records
            .get(id.to_string())
            .await
            .map_err(|e| ApiError::unavailable_from("the command bus is unavailable", e))?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The stored result of command `id`, if any yet.
    pub async fn stored_result(&self, project: &ProjectName, id: Uuid) -> Result<Option<CommandResult>, ApiError> {
        let stream = self
            .js
            .get_stream(events::streams::RESULTS_STREAM)
            .await
            .map_err(|e| ApiError::unavailable_from("the command bus is unavailable", e))?;
        match stream.get_last_raw_message_by_subject(&events::subjects::result(project, id)).await {
            Ok(m) => Ok(events::wire::decode_result(Some(&m.headers), &m.payload).ok()),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ApiError::unavailable_from("the command bus is unavailable", e)),
        }
    }

    /// The parked access-key tokens.
    pub fn parked(&self) -> &ParkedKeys {
        &self.parked
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

/// A result as clients see it: the sealed token is never shown.
pub fn public_result(mut r: CommandResult) -> CommandResult {
    if let events::Outcome::Succeeded { sealed_token, .. } = &mut r.outcome {
        *sealed_token = None;
    }
    r
}

/// Every command type string (for docs and checks).
pub fn command_types() -> Vec<&'static str> {
    CommandType::ALL.iter().map(|t| t.type_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_admission() {
        let limits = BacklogLimits { max_commands: 3, max_bytes: 1_500 * 1024 };
        let none = Backlog::from_counts([]);
        assert_eq!(none, Backlog::default());
        assert!(none.admit(&limits, CommandType::SessionCreate).is_ok());
        // Counted across every type of the project; small types are charged little.
        let small =
            Backlog::from_counts([("ambient.cmd.3.p.permission.grant", 1), ("ambient.cmd.3.p.session.stop", 1)]);
        assert_eq!(small, Backlog { commands: 2, bytes: 2 * events::limits::SMALL_COMMAND_CHARGE as u64 });
        assert!(small.admit(&limits, CommandType::SessionStop).is_ok());
        let full = Backlog::from_counts([("ambient.cmd.3.p.permission.grant", 2), ("ambient.cmd.3.p.session.stop", 1)]);
        assert!(full.admit(&limits, CommandType::SessionStop).unwrap_err().contains("3 pending commands"));
        // Bytes: two large commands take most of 1 500 KiB; a third large one does not fit, a small one may.
        let large = Backlog::from_counts([("ambient.cmd.0.p.session.create", 2)]);
        assert!(large.admit(&limits, CommandType::SessionCreate).unwrap_err().contains("bytes"));
        let one_large = Backlog::from_counts([("ambient.cmd.0.p.session.create", 1)]);
        assert!(one_large.admit(&limits, CommandType::KeyRevoke).is_ok());
        // An unknown subject is charged as large.
        assert_eq!(Backlog::from_counts([("ambient.cmd.0.p.what.ever", 1)]).bytes, one_large.bytes);
        // A nearly full shared stream: a project with much pending waits, one with little does not.
        let gib = 1024 * 1024 * 1024;
        let busy = Backlog { commands: 1000, bytes: 64 * 1024 * 1024 };
        let light = Backlog { commands: 1, bytes: events::limits::SMALL_COMMAND_CHARGE as u64 };
        for (stream, busy_ok, light_ok) in
            [(gib, true, true), (3 * gib + gib / 2, true, true), (4 * gib - gib / 20, false, true)]
        {
            assert_eq!(
                busy.admit_near_full(stream, 4 * gib, CommandType::SessionCreate).is_ok(),
                busy_ok,
                "busy at {stream}"
            );
            assert_eq!(
                light.admit_near_full(stream, 4 * gib, CommandType::SessionCreate).is_ok(),
                light_ok,
                "light at {stream}"
            );
        }
        // Taking something away is never refused for pressure.
        for ty in [
            CommandType::KeyRevoke,
            CommandType::PermissionRevoke,
            CommandType::SessionStop,
            CommandType::SessionDelete,
            CommandType::ProjectDelete,
        ] {
            assert!(busy.admit_near_full(4 * gib - 1, 4 * gib, ty).is_ok(), "{ty:?}");
        }
        assert!(busy.admit_near_full(4 * gib, 0, CommandType::SessionCreate).is_ok(), "no capacity known: no rule");
        assert_eq!(full.retry_after_secs(), 1);
        assert_eq!(Backlog { commands: 100_000, bytes: 0 }.retry_after_secs(), 30);
    }
}
