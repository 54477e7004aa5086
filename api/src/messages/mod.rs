//! Session messages on the bus: each session's conversation is the append-only subject
//! `ambient.msg.<project>.<session>` of the `AMBIENT_MESSAGES` stream; a message's `seq` is its
//! stream sequence.
//!
//! Per-session limits (count, total bytes) are enforced here rather than by the stream's
//! configuration, which every component bootstraps with the same defaults (those caps remain a
//! backstop). Every stored message carries the session's running count and byte total in its
//! headers, and is published with `Nats-Expected-Last-Subject-Sequence`: two appends racing on
//! one session (on one api replica or several) cannot both pass the check, the loser re-reads
//! the tail and tries again.
//!
//! Message bodies are the users' data: nothing here logs them.
//!
//! A session name can be deleted and created again (in a project someone else re-created,
//! too): every message carries the uid of the session it was appended to
//! (`Ambient-Session-Uid`), reads serve only the current session's ([`belongs`]), the first
//! append to a new session purges what an earlier one left on the subject (and its count
//! and bytes do not carry over), and the sweep purges such leftovers too.
//!
//! Each project's messages together hold at most a budget of bytes ([`budget`]), so no project
//! can fill the stream that every tenant shares.

pub mod budget;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use chrono::Utc;
use events::messages::SessionMessage;
use events::status::Incarnation;
use events::streams::MESSAGES_STREAM;
use events::{ProjectName, SessionName};
use futures::StreamExt as _;
use serde_json::Value;

use self::budget::{BudgetError, Budgets};
use crate::errors::Cause;

const H_TYPE: &str = "Ambient-Msg-Type";
const H_COUNT: &str = "Ambient-Msg-Count";
const H_BYTES: &str = "Ambient-Msg-Bytes";
const H_EXPECTED_LAST: &str = "Nats-Expected-Last-Subject-Sequence";
/// The uid of the session a message was appended to.
pub const H_SESSION_UID: &str = "Ambient-Session-Uid";
/// Appends racing on one session retry this often before giving up with 503.
const APPEND_ATTEMPTS: u32 = 20;
/// What the stream stores per message beyond its body and subject: the headers above (uid,
/// type, count, bytes, expected sequence) and the store's own record, rounded up. Charged with
/// every message, so that many tiny messages cannot take far more of the stream than their
/// bytes show.
const STORED_OVERHEAD: u64 = 320;

/// The bytes one message of `body_len` bytes on `subject` takes in the stream, as charged to
/// its session's and project's limits.
pub fn stored_size(subject: &str, body_len: usize) -> u64 {
    body_len as u64 + subject.len() as u64 + STORED_OVERHEAD
}

/// How long a read waits for a message it knows is stored.
const STORED_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages a session may hold.
    pub max_count: u64,
    /// Bytes (stored envelopes) a session may hold.
    pub max_bytes: u64,
    /// Largest single stored envelope.
    pub max_message_bytes: usize,
    /// Bytes the stream may hold, as the nearly-full rule counts them (`None`: the stream's
    /// own `max_bytes`).
    pub store_capacity: Option<u64>,
}

/// How often an api replica asks how full the stream is (appends in between use the answer).
const PRESSURE_EVERY: Duration = Duration::from_secs(1);

/// An append that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The message is larger than allowed.
    #[error("the message is {size} bytes; at most {limit} bytes are allowed")]
    TooLarge { size: usize, limit: usize },
    /// The session's log is full.
    #[error("the session's message log is full ({0}); no more messages can be added")]
    Full(String),
    /// The project's messages hold their whole budget.
    #[error("{0}")]
    ProjectFull(String),
    /// The bus did not answer or refused for another reason.
    #[error("the message log is unavailable: {0}")]
    Unavailable(#[source] Cause),
}

/// A read that did not happen.
#[derive(Debug, thiserror::Error)]
#[error("the message log is unavailable: {0}")]
pub struct ReadError(#[source] Cause);

/// What to read.
#[derive(Debug, Clone)]
pub struct ReadQuery {
    /// Only messages with a greater sequence.
    pub after: u64,
    /// At most this many messages.
    pub limit: usize,
    /// Only these types (all when `None`).
    pub types: Option<Vec<String>>,
    /// When nothing matches yet, wait this long for a matching message.
    pub wait: Duration,
}

/// One page of a session's log.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching messages, in order.
    pub messages: Vec<SessionMessage>,
    /// The last sequence examined (matching or not): read on with `after=<cursor>`.
    pub cursor: u64,
    /// Whether more messages were stored past `cursor` when the page filled up.
    pub more: bool,
}

/// The session-message log.
pub struct MessageLog {
    js: jetstream::Context,
    limits: Limits,
    budgets: Budgets,
    pressure: std::sync::Mutex<Option<(tokio::time::Instant, budget::Pressure)>>,
}

/// The user name of the per-session runner ServiceAccount (`ambient-session-<session>`) that
/// sessions started before runners shared `ambient-runner` still run as.
pub fn legacy_runner_user(project: &str, session: &str) -> String {
    format!("system:serviceaccount:{project}:ambient-session-{session}")
}

fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    h.get(name).and_then(|v| v.as_str().parse().ok()).unwrap_or(0)
}

impl MessageLog {
    /// A log over the `AMBIENT_MESSAGES` stream (created by the bootstrap), each project's
    /// messages within `budgets`.
    pub fn new(js: jetstream::Context, limits: Limits, budgets: Budgets) -> Self {
        Self { js, limits, budgets, pressure: std::sync::Mutex::new(None) }
    }

    /// How full the stream is (asked at most every [`PRESSURE_EVERY`]); `None` when unknown.
    async fn pressure(&self) -> Option<budget::Pressure> {
        let cached = self.pressure.lock().ok().and_then(|p| *p).filter(|(at, _)| at.elapsed() < PRESSURE_EVERY);
        if let Some((_, p)) = cached {
            return Some(p);
        }
        let stream = self.js.get_stream(MESSAGES_STREAM).await.ok()?;
        let info = stream.cached_info();
        let max = u64::try_from(info.config.max_bytes).ok().filter(|m| *m > 0)?;
        let p = budget::Pressure {
            used: info.state.bytes,
            capacity: self.limits.store_capacity.map_or(max, |c| c.min(max)),
        };
        if let Ok(mut cache) = self.pressure.lock() {
            *cache = Some((tokio::time::Instant::now(), p));
        }
        Some(p)
    }

    /// The per-project budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    async fn stream(&self) -> Result<stream::Stream<()>, Cause> {
        self.js.get_stream_no_info(MESSAGES_STREAM).await.map_err(Cause::from)
    }

    /// The last stored message of `subject`: (sequence, count, bytes); zeros when none. With
    /// `of`, a last message of another session than `of` (an earlier one of the same name)
    /// reads as `Err(Tail::Foreign { .. })`.
    async fn tail(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
        of: Option<&Incarnation>,
    ) -> Result<(u64, u64, u64), Tail> {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                if let Some(inc) = of {
                    let mine = decode(&m.payload, m.sequence).is_some_and(|msg| belongs(Some(&m.headers), &msg, inc));
                    if !mine {
                        return Err(Tail::Foreign { seq: m.sequence, bytes: header_u64(&m.headers, H_BYTES) });
                    }
                }
                Ok((m.sequence, header_u64(&m.headers, H_COUNT), header_u64(&m.headers, H_BYTES)))
            }
            Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => Ok((0, 0, 0)),
            Err(e) => Err(Tail::Unavailable(e.into())),
        }
    }

    /// Purges the messages of `subject` up to and including sequence `upto` (what an earlier
    /// session of the same name left, `bytes` in all), never a later one; the bytes go back to
    /// the project's budget when this call purged them.
    async fn purge_upto(
        &self,
        stream: &stream::Stream<()>,
        project: &str,
        subject: &str,
        upto: u64,
        bytes: u64,
    ) -> Result<u64, Cause> {
        let held = self.held_through(stream, subject, upto, bytes).await?;
        let r = stream.purge().filter(subject).sequence(upto.saturating_add(1)).await.map_err(Cause::from)?;
        if r.purged > 0 {
            self.budgets.release(project, held).await;
        }
        Ok(r.purged)
    }

    /// The bytes the messages of `subject` hold from its first through sequence `last`, whose
    /// byte total is `last_bytes`: the totals run on from a session's first message, so after a
    /// partial purge the survivors hold their last total minus what the first one's total
    /// counted before it.
    async fn held_through(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
        last: u64,
        last_bytes: u64,
    ) -> Result<u64, Cause> {
        match stream.direct_get_first_for_subject(subject).await {
            Ok(first) if first.sequence <= last => {
                let before_first =
                    header_u64(&first.headers, H_BYTES).saturating_sub(stored_size(subject, first.payload.len()));
                Ok(last_bytes.saturating_sub(before_first))
            }
            Ok(_) => Ok(0),
            Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends one message to the session `inc` (the api sets its timestamp, the stream its
    /// sequence). Messages an earlier session of the same name left are purged first.
    pub async fn append(
        &self,
        project: &ProjectName,
        session: &SessionName,
        inc: &Incarnation,
        ty: &str,
        payload: Value,
    ) -> Result<SessionMessage, AppendError> {
        let mut msg = SessionMessage { ty: ty.to_string(), payload, timestamp: Utc::now(), seq: 0 };
        let body = serde_json::to_vec(&msg).map_err(|e| AppendError::Unavailable(e.into()))?;
        if body.len() > self.limits.max_message_bytes {
            return Err(AppendError::TooLarge { size: body.len(), limit: self.limits.max_message_bytes });
        }
        let subject = events::subjects::messages(project, session);
        let stream = self.stream().await.map_err(AppendError::Unavailable)?;
        let need = stored_size(&subject, body.len());
        let pressure = self.pressure().await;
        self.budgets.reserve(project.as_str(), need, pressure).await.map_err(|e| match e {
            e @ (BudgetError::Full { .. } | BudgetError::StreamNearlyFull { .. }) => {
                AppendError::ProjectFull(e.to_string())
            }
            BudgetError::Unavailable(e) => AppendError::Unavailable(e),
        })?;
        let appended = self.append_reserved(&stream, project, session, inc, &subject, &mut msg, body).await;
        if appended.is_err() {
            self.budgets.release(project.as_str(), need).await;
        } else if let Ok(mut cache) = self.pressure.lock()
            && let Some((_, p)) = cache.as_mut()
        {
            // Until the next look, this replica's own appends count too (a flood is faster
            // than the look).
            p.used = p.used.saturating_add(need);
        }
        appended.map(|()| msg)
    }

    /// The append itself, its bytes reserved.
    #[allow(clippy::too_many_arguments)]
    async fn append_reserved(
        &self,
        stream: &stream::Stream<()>,
        project: &ProjectName,
        session: &SessionName,
        inc: &Incarnation,
        subject: &str,
        msg: &mut SessionMessage,
        body: Vec<u8>,
    ) -> Result<(), AppendError> {
        let unavailable = AppendError::Unavailable;
        let ty = msg.ty.clone();
        let ty = ty.as_str();
        for attempt in 0..APPEND_ATTEMPTS {
            let (last, count, bytes) = match self.tail(stream, subject, Some(inc)).await {
                Ok(t) => t,
                Err(Tail::Foreign { seq, bytes }) => {
                    let n =
                        self.purge_upto(stream, project.as_str(), subject, seq, bytes).await.map_err(unavailable)?;
                    tracing::info!(project = %project, session = %session, purged = n, "messages of an earlier session of this name purged");
                    continue;
                }
                Err(Tail::Unavailable(e)) => return Err(unavailable(e)),
            };
            if count >= self.limits.max_count {
                return Err(AppendError::Full(format!("{} messages", self.limits.max_count)));
            }
            let total = bytes + stored_size(subject, body.len());
            if total > self.limits.max_bytes {
                return Err(AppendError::Full(format!("{} bytes", self.limits.max_bytes)));
            }
            let mut headers = HeaderMap::new();
            headers.insert(H_EXPECTED_LAST, last.to_string().as_str());
            headers.insert(H_SESSION_UID, inc.uid.as_str());
            headers.insert(H_TYPE, ty);
            headers.insert(H_COUNT, (count + 1).to_string().as_str());
            headers.insert(H_BYTES, total.to_string().as_str());
            let ack =
                async { self.js.publish_with_headers(subject.to_string(), headers, body.clone().into()).await?.await };
            match ack.await {
                Ok(ack) => {
                    msg.seq = ack.sequence;
                    metrics::counter!("ambient_api_session_messages_total", "type" => msg.ty.clone()).increment(1);
                    return Ok(());
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    // Another append won the race: re-read the tail, after a short pause that
                    // grows with contention.
                    tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt + 1))).await;
                }
                Err(e) => {
                    let text = e.to_string();
                    // The stream's own caps, should the flags exceed them.
                    if text.contains("maximum messages per subject") {
                        return Err(AppendError::Full("the stream's per-session cap".into()));
                    }
                    if text.contains("message size exceeds maximum") || text.contains("max payload") {
                        return Err(AppendError::TooLarge { size: body.len(), limit: self.limits.max_message_bytes });
                    }
                    return Err(AppendError::Unavailable(e.into()));
                }
            }
        }
        Err(AppendError::Unavailable("too many concurrent appends to this session; retry".into()))
    }

    /// Reads messages of the session `inc` after `q.after`, waiting up to `q.wait` when none
    /// matches. Messages of an earlier session of the same name are skipped.
    pub async fn read(
        &self,
        project: &ProjectName,
        session: &SessionName,
        inc: &Incarnation,
        q: &ReadQuery,
    ) -> Result<Page, ReadError> {
        let subject = events::subjects::messages(project, session);
        let stream = self.stream().await.map_err(ReadError)?;
        let last = match self.tail(&stream, &subject, None).await {
            Ok((last, _, _)) => last,
            Err(Tail::Foreign { seq, .. }) => seq,
            Err(Tail::Unavailable(e)) => return Err(ReadError(e)),
        };
        let mut page = Page { cursor: q.after, ..Default::default() };
        if last <= q.after && q.wait.is_zero() {
            return Ok(page);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: q.after.saturating_add(1) },
                ..Default::default()
            })
            .await
            .map_err(|e| ReadError(e.into()))?;
        let mut messages = consumer.messages().await.map_err(|e| ReadError(e.into()))?;
        let deadline = tokio::time::Instant::now() + q.wait;
        loop {
            let caught_up = page.cursor >= last;
            if caught_up && (!page.messages.is_empty() || tokio::time::Instant::now() >= deadline) {
                break;
            }
            let until = if caught_up { deadline } else { tokio::time::Instant::now() + STORED_READ_TIMEOUT };
            let m = match tokio::time::timeout_at(until, messages.next()).await {
                Err(_) if caught_up => break,
                Err(_) => return Err(ReadError("stored messages were not delivered in time".into())),
                Ok(None) => return Err(ReadError("the message stream ended".into())),
                Ok(Some(Err(e))) => return Err(ReadError(e.into())),
                Ok(Some(Ok(m))) => m,
            };
            let info = m.info().map_err(ReadError)?;
            page.cursor = info.stream_sequence;
            let pending = info.pending;
            let Some(msg) = decode(&m.payload, page.cursor) else { continue };
            if !belongs(m.headers.as_ref(), &msg, inc) {
                continue;
            }
            if q.types.as_ref().is_none_or(|t| t.contains(&msg.ty)) {
                page.messages.push(msg);
                if page.messages.len() >= q.limit {
                    page.more = pending > 0;
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Removes every message of the session (idempotent); their bytes go back to the
    /// project's budget (once, by whichever caller's purge removed them).
    pub async fn purge(&self, project: &str, session: &str) -> Result<u64, Cause> {
        let stream = self.stream().await?;
        let subject = format!("{}.{project}.{session}", events::subjects::MESSAGES);
        let (upto, bytes) = match self.tail(&stream, &subject, None).await {
            Ok((seq, _, bytes)) => (seq, bytes),
            Err(Tail::Foreign { seq, bytes }) => (seq, bytes),
            Err(Tail::Unavailable(e)) => return Err(e),
        };
        if upto == 0 {
            return Ok(0);
        }
        self.purge_upto(&stream, project, &subject, upto, bytes).await
    }

    /// Purges the messages of `project/session` left by an earlier session of the same name
    /// when its last message is not of `inc` (an append to `inc` does the same): how many were
    /// purged, and the bytes the session's messages hold after.
    pub async fn purge_foreign(&self, project: &str, session: &str, inc: &Incarnation) -> Result<(u64, u64), Cause> {
        let stream = self.stream().await?;
        let subject = format!("{}.{project}.{session}", events::subjects::MESSAGES);
        match self.tail(&stream, &subject, Some(inc)).await {
            Ok((0, _, _)) => Ok((0, 0)),
            Ok((last, _, bytes)) => Ok((0, self.held_through(&stream, &subject, last, bytes).await?)),
            Err(Tail::Foreign { seq, bytes }) => {
                self.purge_upto(&stream, project, &subject, seq, bytes).await.map(|n| (n, 0))
            }
            Err(Tail::Unavailable(e)) => Err(e),
        }
    }

    /// The (project, session) of every session that has messages.
    pub async fn sessions_with_messages(&self) -> Result<Vec<(String, String)>, Cause> {
        let stream = self.stream().await?;
        let mut info = stream
            .info_builder()
            .subjects(format!("{}.>", events::subjects::MESSAGES))
            .fetch()
            .await
            .map_err(Cause::from)?;
        let mut out = Vec::new();
        while let Some(entry) = info.next().await {
            let (subject, _count) = entry.map_err(Cause::from)?;
            if let Some(rest) = subject.strip_prefix(events::subjects::MESSAGES).and_then(|r| r.strip_prefix('.'))
                && let Some((p, s)) = rest.split_once('.')
            {
                out.push((p.to_string(), s.to_string()));
            }
        }
        Ok(out)
    }
}

/// Why the tail of a session's log could not be used.
enum Tail {
    /// The last message is of an earlier session of the same name: its sequence, and the bytes
    /// that session's messages hold.
    Foreign { seq: u64, bytes: u64 },
    /// The bus did not answer.
    Unavailable(Cause),
}

/// Whether a stored message (its headers and envelope) was appended to the session `inc`: its
/// `Ambient-Session-Uid` decides; a message stored before the stamp existed only by its time.
pub fn belongs(headers: Option<&HeaderMap>, msg: &SessionMessage, inc: &Incarnation) -> bool {
    let uid = headers.and_then(|h| h.get(H_SESSION_UID)).map(|v| v.as_str());
    inc.admits(uid, msg.timestamp)
}

/// A stored message as served (its sequence filled in); `None` for a corrupt entry.
pub fn decode(payload: &[u8], seq: u64) -> Option<SessionMessage> {
    let mut m: SessionMessage = serde_json::from_slice(payload).ok()?;
    m.seq = seq;
    Some(m)
}

/// Folds each run of consecutive `message.partial` items into its latest one (which carries
/// the streamed message's most recent state).
pub fn fold_partials(messages: Vec<SessionMessage>) -> Vec<SessionMessage> {
    let mut out: Vec<SessionMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        let folds = m.ty == events::messages::PARTIAL_TYPE
            && out.last().is_some_and(|l| l.ty == events::messages::PARTIAL_TYPE);
        if folds {
            out.pop();
        }
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(ty: &str, seq: u64) -> SessionMessage {
        SessionMessage { ty: ty.into(), payload: json!({"n": seq}), timestamp: Utc::now(), seq }
    }

    #[test]
    fn runs_of_partials_fold_into_their_latest() {
        let input = vec![
            m("system.message", 1),
            m("message.partial", 2),
            m("message.partial", 3),
            m("message.partial", 4),
            m("agent.message", 5),
            m("message.partial", 6),
            m("user.message", 7),
            m("message.partial", 8),
            m("message.partial", 9),
        ];
        let seqs: Vec<u64> = fold_partials(input).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 4, 5, 6, 7, 9]);
        assert!(fold_partials(Vec::new()).is_empty());
    }

    #[test]
    fn the_legacy_runner_identity_is_the_per_session_service_account() {
        assert_eq!(legacy_runner_user("team-a", "s1"), "system:serviceaccount:team-a:ambient-session-s1");
    }
}
