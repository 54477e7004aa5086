//! JetStream streams, consumers and key-value buckets, and an idempotent bootstrap.
//!
//! | stream | subjects | retention | why |
//! |---|---|---|---|
//! | `AMBIENT_COMMANDS` | `ambient.cmd.*.*.*`, stored as `ambient.cmd.<partition>.<project>.<kind>.<action>` | interest, 7 days, discard new, per-subject cap | pending work only: a command leaves the stream when the reconciler acknowledges it (applied or refused); a full stream refuses new commands rather than dropping old ones |
//! | `AMBIENT_RESULTS` | `ambient.result.>` | limits, 7 days, one per subject | outcome of every command; also the reconciler's exactly-once ledger |
//! | `AMBIENT_STATUS` | `ambient.status.>` | limits, 7 days | status events for UIs, bridges, SSE resume |
//! | `AMBIENT_MESSAGES` | `ambient.msg.>` | limits, per-session count and size caps, 8 GiB | the agents' conversations; the api keeps each project within a byte budget (`--messages-max-bytes-per-project`), so no project fills it |
//!
//! Commands are partitioned by project (`{{partition(N,1)}}` subject transform) so that several
//! reconciler replicas share the load while every project's commands stay in one ordered
//! partition. Each partition has one durable consumer with a pinned-client priority group: one
//! replica at a time consumes a partition, and another takes over when it goes away.
//!
//! **Capacity of the commands stream.** It holds only pending commands (accepted, not yet
//! acknowledged by the reconciler): with interest retention an applied or refused command is
//! removed as soon as its partition consumer acknowledges it, so nothing a tenant was refused
//! keeps occupying shared space. No single project can fill it: the api admits a command only
//! while the project's backlog stays under its per-project limits (count and bytes, each pending
//! command charged its type's size bound, see `events::limits::charge_bytes`; api flags
//! `--max-pending-commands-per-project`, default 1 000, and `--max-pending-bytes-per-project`,
//! default 64 MiB) and answers 429 with `Retry-After` to that project only. A user owns at most
//! `--project-quota` projects (reconciler, default 50), so one tenant's backlogs total at most
//! 50 × 64 MiB = 3.2 GiB, below the stream's 4 GiB: filling the stream takes several tenants
//! each at the limit in all their projects, and even then its last tenth is kept for projects
//! with little pending (under 1/512 of the stream): those that filled it get 429 first. The server
//! also caps each stored subject (project × command type) at [`BusConfig::max_commands_per_subject`]
//! pending commands (discard new per subject), so an api replica that skipped the check still
//! cannot flood the stream. Size `max_bytes` as (tenants expected to flood at once) × quota ×
//! per-project bytes.
//!
//! Interest retention drops a message that no consumer is interested in when it is published,
//! so commands must not be accepted before the reconciler created its partition consumers (the
//! api checks the stream's consumer count before publishing; consumers are durable and no
//! component may delete them).
//!
//! All streams use file storage. Durability of an acknowledged publish also depends on the
//! server: run nats-server with `jetstream { sync_interval: always }` (deploy/ and the dev
//! scripts do) so that an acknowledged command is on disk.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::subjects;

/// Commands stream name.
/// Consumers the status and messages streams may hold. Every open SSE stream reads through an
/// ordered consumer of its own (a session's stream one on each), and nats-server 2.15 limits a
/// stream that sets no limit to 1 000 consumers (0 and -1 mean that default, not "unlimited"):
/// the thousand-and-first SSE client across all api replicas was refused 503.
pub const STREAMING_CONSUMERS: i32 = 100_000;

pub const COMMANDS_STREAM: &str = "AMBIENT_COMMANDS";
/// Results stream name.
pub const RESULTS_STREAM: &str = "AMBIENT_RESULTS";
/// Status stream name.
pub const STATUS_STREAM: &str = "AMBIENT_STATUS";
/// Session messages stream name.
pub const MESSAGES_STREAM: &str = "AMBIENT_MESSAGES";
/// Priority group the reconciler pulls with.
pub const RECONCILER_GROUP: &str = "reconciler";
/// Key-value bucket of the read model: projects (`<project>`).
pub const PROJECTS_BUCKET: &str = "ambient-projects";
/// Key-value bucket of the read model: sessions (`<project>.<session>`).
pub const SESSIONS_BUCKET: &str = "ambient-sessions";
/// Key-value bucket of the read model: permissions and keys (`<project>.<kind>.<name>`).
pub const ACCESS_BUCKET: &str = "ambient-access";
/// Key-value bucket of the reconciler's project-quota claims (one key per user): project
/// creates compare-and-set it, so that parallel creates cannot exceed a user's quota.
pub const PROJECT_CLAIMS_BUCKET: &str = "ambient-project-claims";
/// The api's own buckets. The api creates them; their replicas are raised by the reconciler,
/// the one NATS user allowed to change a stream's configuration (see [`raise_replicas`]).
pub mod api_buckets {
    /// Accepted commands (id → record).
    pub const COMMANDS: &str = "ambient-api-commands";
    /// Idempotency keys (hash of principal + key → command id).
    pub const IDEMPOTENCY: &str = "ambient-api-idempotency";
    /// Parked reply keys: `k.<command id>` → sealed reply key, `a.<alias>` → command id.
    pub const PARKED_KEYS: &str = "ambient-api-parked-keys";
    /// Access-key last-use times (`<project>.<keyId>` → RFC 3339).
    pub const KEY_USAGE: &str = "ambient-api-key-usage";
    /// Per-project message budgets (`<project>` → reserved bytes).
    pub const MESSAGE_USAGE: &str = "ambient-api-message-usage";
    /// All of them.
    pub const ALL: [&str; 5] = [COMMANDS, IDEMPOTENCY, PARKED_KEYS, KEY_USAGE, MESSAGE_USAGE];
}

/// Largest size of the commands stream (pending commands only), bytes.
pub const COMMANDS_MAX_BYTES: i64 = 4 * 1024 * 1024 * 1024;

/// Tunables of the bus; defaults fit a small installation.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Number of command partitions (fixed once commands flow; changing it reorders nothing
    /// already stored but moves projects between partitions).
    pub partitions: u32,
    /// How long the server remembers a `Nats-Msg-Id` to drop a duplicate publish.
    pub duplicate_window: Duration,
    /// How long commands, results and status events are kept.
    pub max_age: Duration,
    /// Stream replicas (3 in a clustered production install).
    pub replicas: usize,
    /// Messages kept per session.
    pub max_messages_per_session: i64,
    /// Largest single session message, bytes.
    pub max_message_bytes: i32,
    /// How long a reconciler may hold a command without acknowledging it or extending the
    /// deadline (`AckKind::Progress`); also how soon another replica takes over the partitions
    /// of one that stopped. There is deliberately no server-side redelivery backoff: transient
    /// failures are retried in-process (with backoff) so later commands of the same object
    /// cannot overtake, and redelivery only happens when a replica died.
    pub ack_wait: Duration,
    /// Deliveries of a command before it is given up (a failed result is published).
    pub max_deliver: i64,
    /// Commands a partition's consumer hands out before any is acknowledged: the reconciler
    /// reads this far ahead so that it can share the apply fairly across projects (a project
    /// with a larger backlog than this in one partition delays that partition's others).
    pub max_ack_pending: i64,
    /// Pending commands the server keeps per stored subject (one project's commands of one
    /// type); the next one is refused. A backstop under the api's per-project limits.
    pub max_commands_per_subject: i64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            max_messages_per_session: 10_000,
            max_message_bytes: 256 * 1024,
            ack_wait: Duration::from_secs(10),
            max_deliver: 20,
            max_ack_pending: 20_000,
            max_commands_per_subject: 10_000,
        }
    }
}

impl BusConfig {
    /// The commands stream.
    pub fn commands_stream(&self) -> stream::Config {
        stream::Config {
            name: COMMANDS_STREAM.into(),
            description: Some("Commands accepted by the api, partitioned by project".into()),
            subjects: vec![format!("{}.*.*.*", subjects::COMMANDS)],
            subject_transform: Some(stream::SubjectTransform {
                source: format!("{}.*.*.*", subjects::COMMANDS),
                destination: format!(
                    "{}.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}",
                    subjects::COMMANDS,
                    self.partitions
                ),
            }),
            // Pending work only: acknowledged (applied or refused) commands leave the stream.
            retention: stream::RetentionPolicy::Interest,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            max_messages_per_subject: self.max_commands_per_subject,
            storage: stream::StorageType::File,
            max_age: self.max_age,
            max_bytes: COMMANDS_MAX_BYTES,
            max_message_size: crate::limits::MAX_COMMAND_BYTES as i32 + 64 * 1024,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The results stream.
    pub fn results_stream(&self) -> stream::Config {
        stream::Config {
            name: RESULTS_STREAM.into(),
            description: Some("One result per command".into()),
            subjects: vec![format!("{}.>", subjects::RESULTS)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: self.max_age,
            max_messages_per_subject: 1,
            max_bytes: 2 * 1024 * 1024 * 1024,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The status stream.
    pub fn status_stream(&self) -> stream::Config {
        stream::Config {
            name: STATUS_STREAM.into(),
            max_consumers: STREAMING_CONSUMERS,
            description: Some("Status events of projects, sessions, permissions and keys".into()),
            subjects: vec![format!("{}.>", subjects::STATUS)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: self.max_age,
            max_bytes: 4 * 1024 * 1024 * 1024,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The session messages stream.
    pub fn messages_stream(&self) -> stream::Config {
        stream::Config {
            name: MESSAGES_STREAM.into(),
            max_consumers: STREAMING_CONSUMERS,
            description: Some("Session conversations, one subject per session".into()),
            subjects: vec![format!("{}.>", subjects::MESSAGES)],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            storage: stream::StorageType::File,
            max_messages_per_subject: self.max_messages_per_session,
            max_message_size: self.max_message_bytes + 16 * 1024,
            max_bytes: 8 * 1024 * 1024 * 1024,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Every stream.
    pub fn streams(&self) -> Vec<stream::Config> {
        vec![self.commands_stream(), self.results_stream(), self.status_stream(), self.messages_stream()]
    }

    /// Name of the durable consumer of command partition `p`.
    pub fn partition_consumer_name(p: u32) -> String {
        format!("reconciler-p{p}")
    }

    /// Subject filter of command partition `p` (as stored).
    pub fn partition_filter(p: u32) -> String {
        format!("{}.{p}.>", subjects::COMMANDS)
    }

    /// The durable consumer of command partition `p`.
    pub fn partition_consumer(&self, p: u32) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(Self::partition_consumer_name(p)),
            description: Some(format!("reconciler, command partition {p}")),
            filter_subject: Self::partition_filter(p),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            priority_policy: consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![RECONCILER_GROUP.into()],
            // A replica that stops pulling loses its partitions after this long.
            priority_timeout: self.ack_wait,
            ..Default::default()
        }
    }

    /// The reconciler's project-quota claims bucket (created by the reconciler).
    pub fn project_claims_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: PROJECT_CLAIMS_BUCKET.into(),
            description: "project-quota claims of the reconciler, one key per user".into(),
            history: 1,
            max_value_size: 256 * 1024,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The read-model buckets.
    pub fn buckets(&self) -> Vec<kv::Config> {
        [PROJECTS_BUCKET, SESSIONS_BUCKET, ACCESS_BUCKET]
            .into_iter()
            .map(|bucket| kv::Config {
                bucket: bucket.into(),
                description: "read model kept by the projector".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .collect()
    }
}

/// The bus could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("bootstrap of {what} failed: {source}")]
pub struct BootstrapError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// What a bootstrap run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    /// Streams and buckets created.
    pub created: Vec<String>,
    /// Streams and consumers whose configuration was changed.
    pub updated: Vec<String>,
    /// Streams, consumers and buckets already as configured.
    pub unchanged: Vec<String>,
}

fn err(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> BootstrapError {
    BootstrapError { what: what.into(), source: Box::new(e) }
}

/// Creates or updates every stream and bucket. Safe to run from every component on every start:
/// a second run changes nothing; a changed configuration is applied.
pub async fn bootstrap_streams(js: &jetstream::Context, cfg: &BusConfig) -> Result<BootstrapReport, BootstrapError> {
    let mut report = BootstrapReport::default();
    for want in cfg.streams() {
        let name = want.name.clone();
        match js.get_stream(&name).await {
            Ok(mut s) => {
                let have = s.info().await.map_err(|e| err(&name, e))?.config.clone();
                if stream_differs(&have, &want) {
                    js.update_stream(&want).await.map_err(|e| err(&name, e))?;
                    report.updated.push(name);
                } else {
                    report.unchanged.push(name);
                }
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(want).await.map_err(|e| err(&name, e))?;
                report.created.push(name);
            }
            Err(e) => return Err(err(&name, e)),
        }
    }
    for want in cfg.buckets() {
        let name = format!("KV_{}", want.bucket);
        // Every component bootstraps; only the reconciler raises replicas (`raise_replicas`).
        match ensure_bucket(js, want, Update::Report).await?.1 {
            Change::Created => report.created.push(name),
            Change::Updated => report.updated.push(name),
            Change::Unchanged | Change::Differs(_) => report.unchanged.push(name),
        }
    }
    Ok(report)
}

/// What [`ensure_bucket`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The bucket did not exist.
    Created,
    /// Its replica count was brought to the configured one.
    Updated,
    /// It was as configured.
    Unchanged,
    /// Its replica count differs and this caller may not change it (it has this many).
    Differs(usize),
}

/// Whether [`ensure_bucket`] may change an existing bucket's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The caller's NATS user may update the bucket's stream.
    Allowed,
    /// It may not: a difference is reported ([`Change::Differs`]), never acted on.
    Report,
}

/// Opens bucket `want.bucket`: created when absent; when its replicas differ from
/// `want.num_replicas`, brought to them if `update` allows (a bucket is a stream,
/// `KV_<bucket>`; updating it needs the NATS user's `$JS.API.STREAM.UPDATE` right on it, which
/// is asked for only then).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    want: kv::Config,
    update: Update,
) -> Result<(kv::Store, Change), BootstrapError> {
    let name = format!("KV_{}", want.bucket);
    let bucket = want.bucket.clone();
    let change = match js.get_stream(&name).await {
        Ok(s) if s.cached_info().config.num_replicas == want.num_replicas.max(1) => Change::Unchanged,
        Ok(s) if update == Update::Report => Change::Differs(s.cached_info().config.num_replicas),
        Ok(_) => {
            js.create_or_update_key_value(want).await.map_err(|e| err(&name, e))?;
            Change::Updated
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_key_value(want).await.map_err(|e| err(&name, e))?;
            Change::Created
        }
        Err(e) => return Err(err(&name, e)),
    };
    let store = js.get_key_value(&bucket).await.map_err(|e| err(&name, e))?;
    Ok((store, change))
}

/// Brings the existing streams `names` to `replicas`, changing nothing else of them (for
/// buckets another component creates, e.g. [`api_buckets`]); a missing one is left to its
/// creator. The names of the streams updated.
pub async fn raise_replicas(
    js: &jetstream::Context,
    names: impl IntoIterator<Item = String>,
    replicas: usize,
) -> Result<Vec<String>, BootstrapError> {
    let mut updated = Vec::new();
    for name in names {
        let Ok(mut s) = js.get_stream(&name).await else { continue };
        let mut config = s.info().await.map_err(|e| err(&name, e))?.config.clone();
        if config.num_replicas != replicas.max(1) {
            config.num_replicas = replicas.max(1);
            js.update_stream(&config).await.map_err(|e| err(&name, e))?;
            updated.push(name);
        }
    }
    Ok(updated)
}

/// Creates or updates the reconciler's partition consumers.
pub async fn bootstrap_consumers(js: &jetstream::Context, cfg: &BusConfig) -> Result<BootstrapReport, BootstrapError> {
    let mut report = BootstrapReport::default();
    let stream = js.get_stream(COMMANDS_STREAM).await.map_err(|e| err(COMMANDS_STREAM, e))?;
    for p in 0..cfg.partitions {
        let want = cfg.partition_consumer(p);
        let name = BusConfig::partition_consumer_name(p);
        match stream.get_consumer::<consumer::pull::Config>(&name).await {
            Ok(mut c) => {
                let have = c.info().await.map_err(|e| err(&name, e))?.config.clone();
                if consumer_differs(&have, &want) {
                    stream.update_consumer(want).await.map_err(|e| err(&name, e))?;
                    report.updated.push(name);
                } else {
                    report.unchanged.push(name);
                }
            }
            Err(_) => {
                stream.create_consumer(want).await.map_err(|e| err(&name, e))?;
                report.created.push(name);
            }
        }
    }
    Ok(report)
}

// The server reports an unset limit (0 in our config) as -1.
fn limit(v: i64) -> i64 {
    if v <= 0 { -1 } else { v }
}

// The server fills in defaults, so compare only the fields we set.
fn stream_differs(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects != want.subjects
        || (want.max_consumers > 0 && have.max_consumers != want.max_consumers)
        || have.retention != want.retention
        || have.max_age != want.max_age
        || limit(have.max_bytes) != limit(want.max_bytes)
        || limit(have.max_message_size.into()) != limit(want.max_message_size.into())
        || limit(have.max_messages_per_subject) != limit(want.max_messages_per_subject)
        || have.duplicate_window != want.duplicate_window
        || have.discard != want.discard
        || have.discard_new_per_subject != want.discard_new_per_subject
        || have.allow_direct != want.allow_direct
        || have.num_replicas != want.num_replicas
        || have.description != want.description
        || have.subject_transform.as_ref().map(|t| (&t.source, &t.destination))
            != want.subject_transform.as_ref().map(|t| (&t.source, &t.destination))
}

fn consumer_differs(have: &consumer::Config, want: &consumer::pull::Config) -> bool {
    have.ack_wait != want.ack_wait
        || have.max_deliver != want.max_deliver
        || have.max_ack_pending != want.max_ack_pending
        || have.description != want.description
        || have.filter_subject != want.filter_subject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_read_by_sse_admit_many_consumers() {
        let bus = BusConfig::default();
        for s in [bus.status_stream(), bus.messages_stream()] {
            assert!(s.max_consumers >= 100_000, "{}", s.name);
            let mut old = s.clone();
            old.max_consumers = 0;
            assert!(stream_differs(&old, &s), "{}: an existing stream gets the limit", s.name);
        }
    }

    #[test]
    fn partition_transform_is_well_formed() {
        let c = BusConfig::default().commands_stream();
        let t = c.subject_transform.unwrap();
        assert_eq!(t.destination, "ambient.cmd.{{partition(8,1)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}");
        let cons = BusConfig::default().partition_consumer(3);
        assert_eq!(cons.filter_subject, "ambient.cmd.3.>");
        assert!(cons.backoff.is_empty(), "the server would replace ack_wait by backoff[0]");
    }
}
