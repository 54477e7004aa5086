//! `/api/projects/{project}/agentic-sessions…`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::commands::{
    RunnerStatus, SessionClone, SessionCreate, SessionDisplayName, SessionPatch, SessionRef, SessionStatusReport,
    SessionUpdate,
};
use events::correlation::Correlation;
use events::crd::{AgenticSessionSpec, GROUP};
use events::{CommandBody, ProjectName, SessionName};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::authz::check;
use crate::bodies::{
    Accepted, Acknowledged, CloneSession, CreateSession, DisplayName, Session, SessionCreated, SessionList,
};
use crate::commands::Mutation;
use crate::errors::ApiError;
use crate::extract::{JsonBody, refuse_server_owned, strict};
use crate::reads::rv_at_least;
use crate::routes::{Page, paginate};
use crate::state::{AppState, READ_YOUR_WRITES, accepted, accepted_with};

const SERVER_OWNED: &[&str] = &["userContext", "status", "metadata", "apiVersion", "kind"];

fn session_name(s: &str) -> Result<SessionName, ApiError> {
    SessionName::new(s).map_err(|_| ApiError::NotFound("session not found".into()))
}

/// The operator's bounds on runner pods and the platform's own environment (the rule lives in
/// `events`; the reconciler applies it again): a 422 naming the field, nothing published.
fn check_runner(s: &AgenticSessionSpec, st: &AppState) -> Result<(), ApiError> {
    s.check_runner(&st.config.runner).map(|_| ()).map_err(|e| ApiError::invalid(e.field, e.rule))
}

async fn wait_session(st: &AppState, ns: &str, name: &str, rv: Option<&str>) {
    if let Some(rv) = rv {
        st.reads
            .wait_until(READ_YOUR_WRITES, || {
                st.reads.session(ns, name).is_some_and(|s| rv_at_least(s.metadata.resource_version.as_deref(), rv))
            })
            .await;
    }
}

fn session_or_404(st: &AppState, ns: &str, name: &str) -> Result<Value, ApiError> {
    st.reads
        .session(ns, name)
        .map(|s| st.reads.session_view(ns, &s))
        .ok_or_else(|| ApiError::NotFound("session not found".into()))
}

/// Sessions of the project.
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions", tag = "sessions", params(("project" = ProjectName, Path), Page),
    responses((status = 200, description = "`{items: [AgenticSession]}`", body = SessionList), (status = 404, description = "project not found")))]
pub async fn list_sessions(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    st.require(&caller, &[check(&p, "list", GROUP, "agenticsessions", None)]).await?;
    let items: Vec<Value> = st.reads.sessions_view(&p);
    Ok(axum::Json(paginate(items, &page)?).into_response())
}

/// Creates a session. `userContext` is set by the server from the caller.
#[utoipa::path(post, path = "/api/projects/{project}/agentic-sessions", tag = "sessions", params(("project" = ProjectName, Path)),
    request_body(content = CreateSession, description = "`{name?, prompt, displayName?, llmSettings?, timeout?, interactive?, repos?, mainRepoIndex?, environmentVariables?, resourceOverrides?}`"),
    responses((status = 201, description = "`{message, name, uid}`", body = SessionCreated), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "project not found"), (status = 409, description = "exists"), (status = 422, description = "invalid value")))]
pub async fn create_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(p): Path<String>,
    headers: HeaderMap,
    JsonBody(mut v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    refuse_server_owned(&v, SERVER_OWNED)?;
    let name = match v.as_object_mut().and_then(|m| m.remove("name")) {
        Some(Value::String(n)) => SessionName::new(n).map_err(|e| ApiError::from(e.at("name")))?,
        Some(Value::Null) | None => {
            SessionName::new(format!("agentic-session-{}", chrono::Utc::now().timestamp_millis()))?
        }
        Some(_) => return Err(ApiError::bad_field("name", "name must be a string")),
    };
    // The correlation fields sit beside the spec's in the body.
    let mut given = serde_json::Map::new();
    if let Some(m) = v.as_object_mut() {
        for k in ["labels", "annotations"] {
            if let Some(x) = m.remove(k).filter(|x| !x.is_null()) {
                given.insert(k.into(), x);
            }
        }
    }
    let correlation: Correlation = strict(&Value::Object(given))?;
    correlation.validate().map_err(|e| ApiError::invalid(e.field, e.rule))?;
    let spec: AgenticSessionSpec = strict(&v)?;
    spec.validate()?;
    check_runner(&spec, &st)?;
    let Correlation { labels, annotations } = correlation;
    let body =
        CommandBody::SessionCreate(SessionCreate { labels, annotations, ..SessionCreate::new(name.clone(), spec) });
    match st.mutate(&caller, project, body, &headers, None).await? {
        // The UI reads `name` and then the session itself, which reads show as queued.
        Mutation::Accepted(id) => {
            Ok(accepted_with(id, json!({"message": "Agentic session accepted", "name": name.as_str(), "uid": ""})))
        }
        Mutation::Applied { resource, .. } => {
            wait_session(&st, &p, name.as_str(), resource.resource_version.as_deref()).await;
            let uid = st
                .reads
                .session(&p, name.as_str())
                .and_then(|s| s.metadata.uid.clone())
                .or(resource.uid)
                .unwrap_or_default();
            Ok((
                StatusCode::CREATED,
                axum::Json(
                    json!({"message": "Agentic session created successfully", "name": name.as_str(), "uid": uid}),
                ),
            )
                .into_response())
        }
    }
}

/// One session.
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions/{session}", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
    responses((status = 200, description = "AgenticSession", body = Session), (status = 404, description = "project or session not found")))]
pub async fn get_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    st.require(&caller, &[check(&p, "get", GROUP, "agenticsessions", Some(s.as_str()))]).await?;
    Ok(axum::Json(session_or_404(&st, &p, s.as_str())?).into_response())
}

/// Updates the spec: `{prompt?, displayName?, timeout?, llmSettings?, interactive?}`.
#[utoipa::path(put, path = "/api/projects/{project}/agentic-sessions/{session}", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = SessionPatch, description = "`{prompt?, displayName?, timeout?, llmSettings?, interactive?}`"),
    responses((status = 200, description = "AgenticSession", body = Session), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "not found"), (status = 409, description = "conflict"), (status = 422, description = "invalid value")))]
pub async fn update_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    refuse_server_owned(&v, SERVER_OWNED)?;
    let patch: SessionPatch = strict(&v)?;
    patch.validate()?;
    let body = CommandBody::SessionUpdate(SessionUpdate { name: s.clone(), patch });
    applied_session(&st, &caller, project, &p, s.as_str(), body, &headers, StatusCode::OK).await
}

#[allow(clippy::too_many_arguments)]
async fn applied_session(
    st: &AppState,
    caller: &Caller,
    project: ProjectName,
    ns: &str,
    name: &str,
    body: CommandBody,
    headers: &HeaderMap,
    code: StatusCode,
) -> Result<Response, ApiError> {
    match st.mutate(caller, project, body, headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { resource, .. } => {
            let target_ns = resource.namespace.clone().unwrap_or_else(|| ns.to_string());
            let target = if resource.kind == "AgenticSession" { resource.name.clone() } else { name.to_string() };
            wait_session(st, &target_ns, &target, resource.resource_version.as_deref()).await;
            Ok((code, axum::Json(session_or_404(st, &target_ns, &target)?)).into_response())
        }
    }
}

/// Deletes a session and everything it owns.
#[utoipa::path(delete, path = "/api/projects/{project}/agentic-sessions/{session}", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
    responses((status = 204, description = "deleted"), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "not found")))]
pub async fn delete_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    match st
        .mutate(&caller, project, CommandBody::SessionDelete(SessionRef { name: s.clone() }), &headers, None)
        .await?
    {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => {
            st.reads
                .wait_until(READ_YOUR_WRITES, || {
                    st.reads.session(&p, s.as_str()).is_none_or(|o| o.metadata.deletion_timestamp.is_some())
                })
                .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// Runs the session (again, when it had finished).
#[utoipa::path(post, path = "/api/projects/{project}/agentic-sessions/{session}/start", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
    responses((status = 200, description = "AgenticSession", body = Session), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "not found"), (status = 409, description = "conflict")))]
pub async fn start_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    applied_session(
        &st,
        &caller,
        project,
        &p,
        s.as_str(),
        CommandBody::SessionStart(SessionRef { name: s.clone() }),
        &headers,
        StatusCode::OK,
    )
    .await
}

/// Stops a running session.
#[utoipa::path(post, path = "/api/projects/{project}/agentic-sessions/{session}/stop", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)),
    responses((status = 200, description = "AgenticSession", body = Session), (status = 202, description = "accepted", body = Accepted), (status = 403, description = "forbidden"), (status = 404, description = "not found"), (status = 409, description = "conflict")))]
pub async fn stop_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    applied_session(
        &st,
        &caller,
        project,
        &p,
        s.as_str(),
        CommandBody::SessionStop(SessionRef { name: s.clone() }),
        &headers,
        StatusCode::OK,
    )
    .await
}

/// Copies a session, possibly into another project.
#[utoipa::path(post, path = "/api/projects/{project}/agentic-sessions/{session}/clone", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = CloneSession, description = "`{targetProject, newSessionName}`"),
    responses((status = 201, description = "AgenticSession (the copy)", body = Session), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"),
        (status = 403, description = "forbidden"), (status = 404, description = "not found"), (status = 409, description = "exists"),
        (status = 422, description = "the source's resourceOverrides or environmentVariables are outside the operator's bounds")))]
pub async fn clone_session(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let s = session_name(&s)?;
    let req: CloneSession = strict(&v)?;
    let target = ProjectName::new(req.target_project).map_err(|e| ApiError::from(e.at("targetProject")))?;
    let new_name = SessionName::new(req.new_session_name).map_err(|e| ApiError::from(e.at("newSessionName")))?;
    // The target must be visible too; otherwise it answers like a missing project.
    st.visible_project(&caller, target.as_str()).await?;
    // The copy runs under today's bounds: a source accepted under looser ones is refused here
    // (and again by the reconciler, which reads the source itself).
    if let Some(src) = st.reads.session(&p, s.as_str()) {
        check_runner(&src.spec, &st)?;
    }
    let body = CommandBody::SessionClone(SessionClone {
        name: s,
        target_project: target.clone(),
        new_session_name: new_name.clone(),
    });
    match st.mutate(&caller, project, body, &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { resource, .. } => {
            wait_session(&st, target.as_str(), new_name.as_str(), resource.resource_version.as_deref()).await;
            Ok((StatusCode::CREATED, axum::Json(session_or_404(&st, target.as_str(), new_name.as_str())?))
                .into_response())
        }
    }
}

/// A runner's status report: the session's runner only (see `crate::runners`).
#[utoipa::path(put, path = "/api/projects/{project}/agentic-sessions/{session}/status", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = RunnerStatus, description = "RunnerStatus"),
    responses((status = 200, description = "`{message}`", body = Acknowledged), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"), (status = 404, description = "not found")))]
pub async fn session_status(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let (project, s) = runner_target(&st, &caller, &p, &s).await?;
    let status: RunnerStatus = strict(&v)?;
    if status.message.as_ref().is_some_and(|m| m.len() > 32 * 1024) {
        return Err(ApiError::invalid("message", "message must be at most 32768 bytes"));
    }
    let body = CommandBody::SessionStatus(SessionStatusReport { name: s, status });
    match st.mutate(&caller, project, body, &headers, None).await? {
        Mutation::Accepted(id) => Ok(accepted(id)),
        Mutation::Applied { .. } => Ok(axum::Json(json!({"message": "status updated"})).into_response()),
    }
}

/// A runner sets the session's display name.
#[utoipa::path(put, path = "/api/projects/{project}/agentic-sessions/{session}/displayname", tag = "sessions",
    params(("project" = ProjectName, Path), ("session" = SessionName, Path)), request_body(content = DisplayName, description = "`{displayName}`"),
    responses((status = 200, description = "AgenticSession", body = Session), (status = 202, description = "accepted", body = Accepted), (status = 400, description = "invalid body"), (status = 404, description = "not found")))]
pub async fn session_display_name(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((p, s)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(v): JsonBody,
) -> Result<Response, ApiError> {
    let (project, s) = runner_target(&st, &caller, &p, &s).await?;
    let req: DisplayName = strict(&v)?;
    let body = CommandBody::SessionDisplayName(SessionDisplayName { name: s.clone(), display_name: req.display_name });
    events::limits::check_body(&body)?;
    applied_session(&st, &caller, project, &p, s.as_str(), body, &headers, StatusCode::OK).await
}

/// Runner routes: the runner may not see the project, only report on its own session; anyone
/// else who may not (see `crate::runners`) gets the same 404 as for a missing project.
async fn runner_target(
    st: &AppState,
    caller: &Caller,
    p: &str,
    s: &str,
) -> Result<(ProjectName, SessionName), ApiError> {
    let project = ProjectName::new(p).map_err(|_| ApiError::project_not_found())?;
    let s = SessionName::new(s).map_err(|_| ApiError::project_not_found())?;
    if !st.runs(&caller.principal, p, s.as_str()).await? || st.reads.project(p).is_none() {
        return Err(ApiError::project_not_found());
    }
    Ok((project, s))
}
