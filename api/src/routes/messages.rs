//! `/api/projects/{project}/agentic-sessions/{session}/messages` (and the alias
//! `/api/projects/{project}/sessions/{session}/messages` the existing UI calls): a session's
//! conversation, an append-only log on the bus (see `crate::messages`).
//!
//! Who may do what:
//! - the session's own runner (a token bound to a pod of the session's Job, see
//!   `crate::runners`) appends agent-side types and reads, e.g. its inbox:
//!   `GET …?types=user.message&after=<seq>&wait=<seconds>`;
//! - callers with edit (`update agenticsessions` on the session) append `user.message`,
//!   `interrupt` and `end_session`, to interactive sessions only;
//! - callers with view (`get agenticsessions` on the session) read;
//! - everyone else gets the answers of any other route (a foreign project is the same 404).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use events::crd::GROUP;
use events::messages::{MESSAGE_TYPES, SessionMessage, USER_MESSAGE_TYPES};
use events::{ProjectName, SessionName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::authz::check;
use crate::bodies::{AppendMessage, MessagePage};
use crate::errors::ApiError;
use crate::extract::{JsonBody, refuse_server_owned, strict};
use crate::messages::{AppendError, ReadQuery, fold_partials, legacy_runner_user};
use crate::routes::MAX_PAGE;
use crate::state::AppState;

/// Query of a message read.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only messages after this sequence (a message's `seq`, or a page's `lastSeq`).
    #[param(value_type = Option<u64>, minimum = 0)]
    pub after: Option<String>,
    /// At most this many messages, 1..=1000 (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Comma-separated message types to return (default: all).
    pub types: Option<String>,
    /// When no message matches yet, wait up to this many seconds for one (long-poll; default 0,
    /// at most the server's `--messages-max-wait`).
    #[param(value_type = Option<u32>, minimum = 0)]
    pub wait: Option<String>,
    /// `1`, `true` or `yes`: every `message.partial` item; otherwise each run of consecutive
    /// partials is folded into its latest one.
    pub include_partial_messages: Option<String>,
}

/// Who the caller is to this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    /// The session's own runner.
    Runner,
    /// Someone who may see the project.
    Member,
}

/// Resolves the project, the session and the caller's standing; a caller who is neither the
/// session's runner nor allowed to see the project gets the one 404 of a missing project.
async fn resolve(
    st: &AppState,
    caller: &Caller,
    p: &str,
    s: &str,
) -> Result<(ProjectName, SessionName, Party), ApiError> {
    let Ok(project) = ProjectName::new(p) else { return Err(ApiError::project_not_found()) };
    let Ok(session) = SessionName::new(s) else {
        st.visible_project(caller, p).await?;
        return Err(ApiError::NotFound("session not found".into()));
    };
    let party = if may_be_runner(&caller.principal, p, s)
        && st.runs(&caller.principal, p, s).await?
        && st.reads.project(p).is_some()
    {
        Party::Runner
    } else {
        st.visible_project(caller, p).await?;
        Party::Member
    };
    Ok((project, session, party))
}

/// Whether the caller could be the session's runner (checked by `crate::runners`): a
/// pod-bound token of the project's runner ServiceAccount, or the per-session ServiceAccount
/// of a session started before runners shared one. Anyone else is a member or nobody, without
/// a review spent on the question.
fn may_be_runner(who: &events::Principal, p: &str, s: &str) -> bool {
    events::crd::runner::BoundPod::of(who).is_some() || who.user == legacy_runner_user(p, s)
}

fn parse_num<T: std::str::FromStr>(field: &str, v: &Option<String>) -> Result<Option<T>, ApiError> {
    v.as_deref()
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| ApiError::bad_field(field, format!("{field} must be a non-negative integer")))
        })
        .transpose()
}

fn parse_flag(field: &str, v: &Option<String>) -> Result<bool, ApiError> {
    match v.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if matches!(s.as_str(), "1" | "true" | "yes") => Ok(true),
        Some(s) if matches!(s.as_str(), "" | "0" | "false" | "no") => Ok(false),
        Some(_) => Err(ApiError::bad_field(field, format!("{field} must be 1, true, yes, 0, false or no"))),
    }
}

fn read_query(q: &MessagesQuery, max_wait: Duration) -> Result<(ReadQuery, bool), ApiError> {
    let after = parse_num::<u64>("after", &q.after)?.unwrap_or(0);
    let limit = parse_num::<usize>("limit", &q.limit)?.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_field("limit", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let types = match q.types.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => {
            let types: Vec<String> = t.split(',').map(|t| t.trim().to_string()).collect();
            if let Some(bad) = types.iter().find(|t| !MESSAGE_TYPES.contains(&t.as_str())) {
                let bad: String = bad.chars().take(64).collect();
                return Err(ApiError::bad_field(
                    "types",
                    format!("unknown message type {bad:?}; known: {}", MESSAGE_TYPES.join(", ")),
                ));
            }
            Some(types)
        }
    };
    let wait = parse_num::<u64>("wait", &q.wait)?.unwrap_or(0);
    if wait > max_wait.as_secs() {
        return Err(ApiError::bad_field("wait", format!("wait must be at most {} seconds", max_wait.as_secs())));
    }
    let partials = parse_flag("include_partial_messages", &q.include_partial_messages)?;
    Ok((ReadQuery { after, limit, types, wait: Duration::from_secs(wait) }, partials))
}

async fn read(st: Arc<AppState>, caller: Caller, p: String, s: String, q: MessagesQuery) -> Result<Response, ApiError> {
    let (project, session, party) = resolve(&st, &caller, &p, &s).await?;
    if party == Party::Member {
        st.require(&caller, &[check(&p, "get", GROUP, "agenticsessions", Some(session.as_str()))]).await?;
    }
    let (query, include_partials) = read_query(&q, st.config.messages_max_wait)?;
    let Some(inc) = st.reads.session_incarnation(&p, session.as_str()) else {
        // Accepted but not created yet (reads show it queued): no messages yet, not "missing".
        if st.reads.session(&p, session.as_str()).is_some() {
            return Ok(axum::Json(
                json!({"sessionId": session.as_str(), "messages": [], "lastSeq": query.after, "hasMore": false}),
            )
            .into_response());
        }
        return Err(ApiError::NotFound("session not found".into()));
    };
    // A waiting read holds a consumer open like an event stream does, and counts as one.
    let _slot = if query.wait.is_zero() { None } else { Some(st.limits.streams.open(&caller.principal.user)?) };
    let page = st
        .messages
        .read(&project, &session, &inc, &query)
        .await
        .map_err(|e| ApiError::unavailable_from("reading the messages failed", e))?;
    let messages = if include_partials { page.messages } else { fold_partials(page.messages) };
    Ok(axum::Json(json!({
        "sessionId": session.as_str(),
        "messages": messages,
        "lastSeq": page.cursor,
        "hasMore": page.more,
    }))
    .into_response())
}

async fn append(st: Arc<AppState>, caller: Caller, p: String, s: String, v: Value) -> Result<Response, ApiError> {
    let (project, session, party) = resolve(&st, &caller, &p, &s).await?;
    refuse_server_owned(&v, &["timestamp", "seq"])?;
    let req: AppendMessage = strict(&v)?;
    if !MESSAGE_TYPES.contains(&req.ty.as_str()) {
        return Err(ApiError::invalid("type", format!("type must be one of {}", MESSAGE_TYPES.join(", "))));
    }
    let user_side = USER_MESSAGE_TYPES.contains(&req.ty.as_str());
    match (party, user_side) {
        (Party::Runner, false) => {}
        (Party::Runner, true) => {
            return Err(ApiError::Forbidden(format!("the session's runner may not append {} messages", req.ty)));
        }
        (Party::Member, false) => {
            return Err(ApiError::Forbidden(format!("only the session's runner may append {} messages", req.ty)));
        }
        (Party::Member, true) => {
            st.require(&caller, &[check(&p, "update", GROUP, "agenticsessions", Some(session.as_str()))]).await?;
        }
    }
    let Some(obj) = st.reads.session(&p, session.as_str()) else {
        return Err(ApiError::NotFound("session not found".into()));
    };
    if user_side && !obj.spec.interactive.unwrap_or(false) {
        return Err(ApiError::Conflict {
            reason: "NotInteractive",
            message: format!("session {session} is not interactive: it takes no {} messages", req.ty),
        });
    }
    let Some(inc) = crate::reads::incarnation_of(obj.as_ref()) else {
        return Err(ApiError::NotFound("session not found".into()));
    };
    match st.messages.append(&project, &session, &inc, &req.ty, req.payload).await {
        Ok(m) => Ok((StatusCode::CREATED, axum::Json(m)).into_response()),
        Err(e @ AppendError::TooLarge { .. }) => Err(ApiError::TooLarge(e.to_string())),
        Err(e @ AppendError::Full(_)) => Err(ApiError::Conflict { reason: "MessageLogFull", message: e.to_string() }),
        Err(e @ AppendError::ProjectFull(_)) => {
            Err(ApiError::Conflict { reason: "ProjectMessagesFull", message: e.to_string() })
        }
        Err(e @ AppendError::Unavailable(_)) => Err(ApiError::unavailable_from("appending the message failed", e)),
    }
}

/// The session's messages, oldest first: `{sessionId, messages: [{type, payload, timestamp, seq}], lastSeq, hasMore}`.
/// Read on with `after=<lastSeq>` while `hasMore`; with `wait`, an empty answer is delayed until
/// a matching message arrives or the wait ends (the runner's inbox).
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions/{session}/messages", tag = "messages",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path), MessagesQuery),
    responses((status = 200, description = "`{sessionId, messages, lastSeq, hasMore}`", body = MessagePage), (status = 400, description = "invalid query"),
        (status = 403, description = "forbidden"), (status = 404, description = "project or session not found"), (status = 429, description = "with `wait`: the caller holds as many waiting reads and event streams as allowed"), (status = 503, description = "the bus is unavailable")))]
pub async fn list_messages(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    Query(q): Query<MessagesQuery>,
) -> Result<Response, ApiError> {
    read(st, caller, p, s, q).await
}

/// Appends one message `{type, payload}`; the server sets `timestamp` and `seq`.
#[utoipa::path(post, path = "/api/projects/{project}/agentic-sessions/{session}/messages", tag = "messages",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = AppendMessage, description = "`{type, payload?}`"),
    responses((status = 201, description = "the stored message `{type, payload, timestamp, seq}`", body = SessionMessage), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project or session not found"),
        (status = 409, description = "the session is not interactive (`NotInteractive`), its message log is full (`MessageLogFull`), or its project's messages hold their whole budget (`ProjectMessagesFull`)"), (status = 413, description = "message too large"),
        (status = 415, description = "not JSON"), (status = 422, description = "unknown type"), (status = 503, description = "the bus is unavailable")))]
pub async fn post_message(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    append(st, caller, p, s, v).await
}

/// Alias of `GET …/agentic-sessions/{session}/messages` (the path the existing UI calls).
#[utoipa::path(get, path = "/api/projects/{project}/sessions/{session}/messages", tag = "messages",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path), MessagesQuery),
    responses((status = 200, description = "`{sessionId, messages, lastSeq, hasMore}`", body = MessagePage), (status = 400, description = "invalid query"),
        (status = 403, description = "forbidden"), (status = 404, description = "project or session not found"), (status = 429, description = "with `wait`: the caller holds as many waiting reads and event streams as allowed"), (status = 503, description = "the bus is unavailable")))]
pub async fn list_messages_alias(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    Query(q): Query<MessagesQuery>,
) -> Result<Response, ApiError> {
    read(st, caller, p, s, q).await
}

/// Alias of `POST …/agentic-sessions/{session}/messages`.
#[utoipa::path(post, path = "/api/projects/{project}/sessions/{session}/messages", tag = "messages",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = AppendMessage, description = "`{type, payload?}`"),
    responses((status = 201, description = "the stored message `{type, payload, timestamp, seq}`", body = SessionMessage), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project or session not found"),
        (status = 409, description = "the session is not interactive (`NotInteractive`), its message log is full (`MessageLogFull`), or its project's messages hold their whole budget (`ProjectMessagesFull`)"), (status = 413, description = "message too large"),
        (status = 415, description = "not JSON"), (status = 422, description = "unknown type"), (status = 503, description = "the bus is unavailable")))]
pub async fn post_message_alias(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    append(st, caller, p, s, v).await
}
