//! Live streams (Server-Sent Events) fed by JetStream through ordered consumers. Authorization
//! is checked on connect and again every 2 s: a caller whose access is revoked, or whose access
//! cannot be checked (the API server does not answer), has the stream closed; a client
//! reconnects with `Last-Event-ID` and is authorized afresh. One principal holds at most
//! `--sse-max-streams-per-caller` streams at once; the next gets 429.
//!
//! - A project's stream carries its status events; the SSE `id` is the AMBIENT_STATUS sequence,
//!   so `Last-Event-ID: <seq>` resumes exactly after the last event seen.
//! - A session's stream carries its status events and its messages (`event: message`, data the
//!   message envelope `{type, payload, timestamp, seq}`). Its ids are cursors over both streams,
//!   `<statusSeq>:<messageSeq>` (the positions in AMBIENT_STATUS and in AMBIENT_MESSAGES after
//!   this event), so one `Last-Event-ID` resumes both exactly, whichever kind of event came
//!   last. A plain `<statusSeq>` (the project stream's form) resumes the status events and
//!   starts the messages live.
//!
//! History never crosses owners: a project name can be deleted and taken by someone else, so
//! both streams serve only the status events of the namespace that holds the name when the
//! stream opens (its uid, [`Incarnation`]), and only the messages of the session that exists
//! now, however old the `Last-Event-ID`. And a project stream shows each event only to a
//! caller the REST read of the same facts would answer ([`StatusAudience`]: keys need
//! `list serviceaccounts`, grants `list rolebindings`), re-evaluated with the access re-check.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, DeliverPolicy},
};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use events::access::{ResourceCheck, StatusAudience};
use events::status::Incarnation;
use events::{ProjectName, SessionName, StatusEvent};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::authz::{check, project_visible};
use crate::errors::{ApiError, Cause};
use crate::limits::StreamSlot;
use crate::state::AppState;

const RECHECK: Duration = Duration::from_secs(2);
/// Longest a re-check may take before the stream is closed as undecidable (generous: a busy API
/// server answers slowly, and most re-checks are answered from the authorization cache).
const RECHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Status events of a project.
#[utoipa::path(get, path = "/api/projects/{project}/events", tag = "events", params(("project" = ProjectName, Path),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this stream sequence")),
    responses((status = 200, description = "server-sent events: `id:` the stream position (send it back as `Last-Event-ID`), `event:` the status event type, `data:` `{id, type, project, kind, name, time, data}` where `data` is as the event type's JSON Schema (`/api/schemas/events/{type}`) describes", content_type = "text/event-stream", body = String), (status = 404, description = "project not found")))]
pub async fn project_events(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let checks = vec![project_visible(&p), check(&p, "list", events::crd::GROUP, "agenticsessions", None)];
    st.require(&caller, &checks[1..]).await?;
    let inc = st.reads.project_incarnation(&p).ok_or_else(ApiError::project_not_found)?;
    let filter = events::subjects::status_of_project(&project);
    let slot = st.limits.streams.open(&caller.principal.user)?;
    stream(st, caller, filter, checks, &headers, slot, inc, Audience::new(&p)).await
}

/// Status events of one session.
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions/{session}/events", tag = "events",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this stream sequence")),
    responses((status = 200, description = "server-sent events: `id:` the stream position (send it back as `Last-Event-ID`), `event:` the status event type, `data:` `{id, type, project, kind, name, time, data}` where `data` is as the event type's JSON Schema (`/api/schemas/events/{type}`) describes", content_type = "text/event-stream", body = String), (status = 404, description = "not found")))]
pub async fn session_events(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project: ProjectName = st.visible_project(&caller, &p).await?;
    let s = SessionName::new(s).map_err(|_| ApiError::NotFound("session not found".into()))?;
    let checks = vec![project_visible(&p), check(&p, "get", events::crd::GROUP, "agenticsessions", Some(s.as_str()))];
    st.require(&caller, &checks[1..]).await?;
    // Only this session's status events reach this stream, and their REST read (`GET` of the
    // session) is the check above: no per-event audience here.
    let inc = st.reads.project_incarnation(&p).ok_or_else(ApiError::project_not_found)?;
    let slot = st.limits.streams.open(&caller.principal.user)?;
    let cursor =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(SessionCursor::parse).unwrap_or_default();
    let unavailable = |e: Cause| ApiError::unavailable_from("the session stream is unavailable", e);
    let js = st.commands.jetstream();
    let (status_from, status_seq) =
        start_of(js, events::streams::STATUS_STREAM, cursor.status).await.map_err(unavailable)?;
    let (msg_from, msg_seq) =
        start_of(js, events::streams::MESSAGES_STREAM, cursor.messages).await.map_err(unavailable)?;
    let mut status =
        ordered(js, events::streams::STATUS_STREAM, events::subjects::status_of_session(&project, &s), status_from)
            .await
            .map_err(unavailable)?;
    let mut messages =
        ordered(js, events::streams::MESSAGES_STREAM, events::subjects::messages(&project, &s), msg_from)
            .await
            .map_err(unavailable)?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    metrics::gauge!("ambient_api_sse_streams").increment(1.0);
    tokio::spawn(async move {
        let _slot = slot;
        let mut at = SessionCursor { status: Some(status_seq), messages: Some(msg_seq) };
        let mut tick = tokio::time::interval(RECHECK);
        tick.tick().await;
        loop {
            let ev = tokio::select! {
                _ = st.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => match still_allowed(&st, &caller, &checks).await {
                    Some(end) => { let _ = tx.send(Ok(end)).await; break; }
                    None => continue,
                },
                m = status.next() => {
                    let Some(m) = m else { break };
                    let Some((seq, ev)) = status_event(m) else { continue };
                    // Skipped events still move the cursor: a resume never re-reads them.
                    at.status = Some(seq);
                    if !admitted(&ev, &inc) { continue }
                    let (data, ty) = render(&ev);
                    Event::default().event(ty).data(data)
                }
                m = messages.next() => {
                    let Some(m) = m else { break };
                    let Some((seq, data, of_session)) = message_event(m, &st, &project, &s) else { continue };
                    at.messages = Some(seq);
                    if !of_session { continue }
                    Event::default().event("message").data(data)
                }
            };
            if tx.send(Ok(ev.id(at.to_string()))).await.is_err() {
                break;
            }
        }
        metrics::gauge!("ambient_api_sse_streams").decrement(1.0);
    });
    Ok(sse_response(rx))
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    st: Arc<AppState>,
    caller: Caller,
    filter: String,
    checks: Vec<ResourceCheck>,
    headers: &HeaderMap,
    slot: StreamSlot,
    inc: Incarnation,
    mut audience: Audience,
) -> Result<Response, ApiError> {
    let deliver_policy =
        match headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq.saturating_add(1) },
            None => DeliverPolicy::New,
        };
    let unavailable = |e: Cause| ApiError::unavailable_from("the status stream is unavailable", e);
    let mut messages = ordered(st.commands.jetstream(), events::streams::STATUS_STREAM, filter, deliver_policy)
        .await
        .map_err(unavailable)?;
    audience.refresh(&st, &caller).await;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    metrics::gauge!("ambient_api_sse_streams").increment(1.0);
    tokio::spawn(async move {
        let _slot = slot;
        let mut tick = tokio::time::interval(RECHECK);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = st.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => {
                    if let Some(end) = still_allowed(&st, &caller, &checks).await {
                        let _ = tx.send(Ok(end)).await;
                        break;
                    }
                    audience.refresh(&st, &caller).await;
                }
                m = messages.next() => {
                    let Some(m) = m else { break };
                    let Some((seq, ev)) = status_event(m) else { continue };
                    if !admitted(&ev, &inc) || !audience.shows(&ev) { continue }
                    let (data, ty) = render(&ev);
                    let sse = Event::default().id(seq.to_string()).event(ty).data(data);
                    if tx.send(Ok(sse)).await.is_err() { break; }
                }
            }
        }
        metrics::gauge!("ambient_api_sse_streams").decrement(1.0);
    });
    Ok(sse_response(rx))
}

/// A session stream's position: the last status and message sequences delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SessionCursor {
    status: Option<u64>,
    messages: Option<u64>,
}

impl SessionCursor {
    /// `<statusSeq>:<messageSeq>`, or a plain `<statusSeq>`; an unreadable part starts live.
    fn parse(v: &str) -> Self {
        let mut parts = v.trim().splitn(2, ':');
        let status = parts.next().and_then(|p| p.trim().parse().ok());
        let messages = parts.next().and_then(|p| p.trim().parse().ok());
        SessionCursor { status, messages }
    }
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.status.unwrap_or(0), self.messages.unwrap_or(0))
    }
}

/// Where to start reading `stream`: after `resume`, or after its current last message (live).
/// Returns the start policy and the sequence the cursor starts at.
async fn start_of(js: &jetstream::Context, stream: &str, resume: Option<u64>) -> Result<(DeliverPolicy, u64), Cause> {
    let seq = match resume {
        Some(seq) => seq,
        None => js.get_stream(stream).await.map_err(Cause::from)?.cached_info().state.last_sequence,
    };
    Ok((DeliverPolicy::ByStartSequence { start_sequence: seq.saturating_add(1) }, seq))
}

async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    deliver_policy: DeliverPolicy,
) -> Result<consumer::pull::Ordered, Cause> {
    js.get_stream_no_info(stream)
        .await
        .map_err(Cause::from)?
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: filter, deliver_policy, ..Default::default() })
        .await
        .map_err(Cause::from)?
        .messages()
        .await
        .map_err(Cause::from)
}

/// `None` while the caller keeps access; otherwise the last event of the stream: `revoked` when
/// access was lost, `unavailable` when it could not be checked (fail closed: the stream ends, and a
/// reconnect is authorized afresh). A check that takes over RECHECK_TIMEOUT counts as failed.
async fn still_allowed(st: &AppState, caller: &Caller, checks: &[ResourceCheck]) -> Option<Event> {
    match tokio::time::timeout(RECHECK_TIMEOUT, st.authz.all_allowed(&caller.principal, checks)).await {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some(Event::default().event("revoked").data("{\"error\":\"access revoked\"}")),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "SSE access re-check failed; closing the stream");
            Some(
                Event::default().event("unavailable").data("{\"error\":\"access could not be re-checked; reconnect\"}"),
            )
        }
        Err(_) => {
            tracing::warn!("SSE access re-check timed out; closing the stream");
            Some(
                Event::default().event("unavailable").data("{\"error\":\"access could not be re-checked; reconnect\"}"),
            )
        }
    }
}

/// Which status events a project stream shows its caller: those of each [`StatusAudience`]
/// whose check (the REST read's) the caller passes. Refreshed with the access re-check; a
/// check the API server cannot decide keeps the last decision, and hides at first.
pub(crate) struct Audience {
    project: String,
    shown: [bool; StatusAudience::ALL.len()],
}

impl Audience {
    pub(crate) fn new(project: &str) -> Self {
        Audience { project: project.to_string(), shown: [false; StatusAudience::ALL.len()] }
    }

    async fn refresh(&mut self, st: &AppState, caller: &Caller) {
        let checks = StatusAudience::ALL.map(|a| a.check(&self.project));
        // Bounded like the access re-check: a hung review must not hold the stream (and its slot).
        let decide = futures::future::join_all(checks.iter().map(|c| st.authz.allowed(&caller.principal, c)));
        let Ok(decided) = tokio::time::timeout(RECHECK_TIMEOUT, decide).await else {
            tracing::warn!("SSE audience checks timed out; keeping the last decisions");
            return;
        };
        for (i, d) in decided.into_iter().enumerate() {
            match d {
                Ok(allowed) => self.shown[i] = allowed,
                Err(e) => tracing::warn!(error = %e, "SSE audience check failed; keeping the last decision"),
            }
        }
    }

    fn shows(&self, ev: &StatusEvent) -> bool {
        let a = StatusAudience::of(&ev.body);
        StatusAudience::ALL.iter().position(|x| *x == a).is_some_and(|i| self.shown[i])
    }
}

/// Whether a status event is of the project namespace the stream serves.
fn admitted(ev: &StatusEvent, inc: &Incarnation) -> bool {
    inc.admits(ev.project_uid.as_deref(), ev.time)
}

type Delivered = Result<jetstream::Message, consumer::pull::OrderedError>;

/// A status message as (sequence, event).
fn status_event(m: Delivered) -> Option<(u64, StatusEvent)> {
    let m = m.map_err(|e| tracing::warn!(error = %e, "status stream error")).ok()?;
    let seq = m.info().ok()?.stream_sequence;
    match events::wire::decode_status(m.headers.as_ref(), &m.payload) {
        Ok(ev) => Some((seq, ev)),
        Err(e) => {
            tracing::warn!(error = %e, seq, "undecodable status event skipped");
            None
        }
    }
}

/// A status event as (SSE data, event type).
fn render(ev: &StatusEvent) -> (String, &'static str) {
    let data = json!({"id": ev.id, "type": ev.body.type_str(), "project": ev.project.as_str(),
        "kind": ev.body.kind().as_str(), "name": ev.name, "time": ev.time.to_rfc3339(), "data": ev.body.data_json()});
    (data.to_string(), ev.body.type_str())
}

/// A session message as (sequence, SSE data: its envelope, whether it is of the session that
/// exists now: a message of an earlier session of the same name is not served).
fn message_event(
    m: Delivered,
    st: &AppState,
    project: &ProjectName,
    session: &SessionName,
) -> Option<(u64, String, bool)> {
    let m = m.map_err(|e| tracing::warn!(error = %e, "message stream error")).ok()?;
    let seq = m.info().ok()?.stream_sequence;
    let Some(msg) = crate::messages::decode(&m.payload, seq) else {
        tracing::warn!(seq, "undecodable session message skipped");
        return None;
    };
    let now = st.reads.session_incarnation(project.as_str(), session.as_str());
    let of_session = now.is_some_and(|inc| crate::messages::belongs(m.headers.as_ref(), &msg, &inc));
    serde_json::to_string(&msg).ok().map(|d| (seq, d, of_session))
}

fn sse_response(rx: mpsc::Receiver<Result<Event, Infallible>>) -> Response {
    let body = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut resp = body.into_response();
    resp.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    resp.headers_mut().insert("cache-control", axum::http::HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_shows_only_what_its_checks_allowed() {
        use events::status::Tombstone;
        let mut a = Audience::new("p");
        let at = |x: StatusAudience| StatusAudience::ALL.iter().position(|y| *y == x).unwrap();
        a.shown[at(StatusAudience::Project)] = true;
        a.shown[at(StatusAudience::Sessions)] = true;
        let ev = |body| StatusEvent {
            id: "i".into(),
            project: ProjectName::new("p").unwrap(),
            name: "n".into(),
            time: chrono::Utc::now(),
            project_uid: None,
            body,
        };
        let t = Tombstone { name: "n".into(), uid: None, at: chrono::Utc::now() };
        assert!(a.shows(&ev(events::StatusBody::SessionDeleted(t.clone()))));
        assert!(a.shows(&ev(events::StatusBody::ProjectDeleted(t.clone()))));
        assert!(!a.shows(&ev(events::StatusBody::KeyDeleted(t.clone()))), "keys need list serviceaccounts");
        assert!(!a.shows(&ev(events::StatusBody::PermissionDeleted(t.clone()))), "grants need list rolebindings");
        assert!(
            !Audience::new("p").shows(&ev(events::StatusBody::ProjectDeleted(t))),
            "nothing before the first decision"
        );
    }

    #[test]
    fn the_project_audience_is_the_project_visibility_check() {
        assert_eq!(StatusAudience::Project.check("p"), project_visible("p"));
    }

    #[test]
    fn session_cursors_round_trip_and_accept_a_status_sequence() {
        let c = SessionCursor::parse("41:7");
        assert_eq!(c, SessionCursor { status: Some(41), messages: Some(7) });
        assert_eq!(c.to_string(), "41:7");
        assert_eq!(SessionCursor::parse("41"), SessionCursor { status: Some(41), messages: None });
        assert_eq!(SessionCursor::parse("junk"), SessionCursor::default());
    }
}
