//! Live status streams (Server-Sent Events) fed by the AMBIENT_STATUS stream through an ordered
//! consumer. The SSE `id` is the stream sequence, so `Last-Event-ID` resumes exactly after the
//! last event seen. Authorization is checked on connect and again every 2 s: a caller whose
//! access is revoked has the stream closed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use events::access::ResourceCheck;
use events::{ProjectName, SessionName};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::authz::{check, project_visible};
use crate::errors::ApiError;
use crate::state::AppState;

const RECHECK: Duration = Duration::from_secs(2);

/// Status events of a project.
#[utoipa::path(get, path = "/api/projects/{project}/events", tag = "events", params(("project" = String, Path),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this stream sequence")),
    responses((status = 200, description = "text/event-stream of status events", content_type = "text/event-stream"), (status = 404, description = "project not found")))]
pub async fn project_events(State(st): State<Arc<AppState>>, caller: Caller, Path(p): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project = st.visible_project(&caller, &p).await?;
    let checks = vec![project_visible(&p), check(&p, "list", events::crd::GROUP, "agenticsessions", None)];
    st.require(&caller, &checks[1..]).await?;
    let filter = events::subjects::status_of_project(&project);
    stream(st, caller, filter, checks, &headers).await
}

/// Status events of one session.
#[utoipa::path(get, path = "/api/projects/{project}/agentic-sessions/{session}/events", tag = "events",
    params(("project" = String, Path), ("session" = String, Path), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this stream sequence")),
    responses((status = 200, description = "text/event-stream of status events", content_type = "text/event-stream"), (status = 404, description = "not found")))]
pub async fn session_events(State(st): State<Arc<AppState>>, caller: Caller, Path((p, s)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project: ProjectName = st.visible_project(&caller, &p).await?;
    let s = SessionName::new(s).map_err(|_| ApiError::NotFound("session not found".into()))?;
    let checks = vec![project_visible(&p), check(&p, "get", events::crd::GROUP, "agenticsessions", Some(s.as_str()))];
    st.require(&caller, &checks[1..]).await?;
    let filter = events::subjects::status_of_session(&project, &s);
    stream(st, caller, filter, checks, &headers).await
}

async fn stream(st: Arc<AppState>, caller: Caller, filter: String, checks: Vec<ResourceCheck>, headers: &HeaderMap) -> Result<Response, ApiError> {
    let deliver_policy = match headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq.saturating_add(1) },
        None => DeliverPolicy::New,
    };
    let unavailable = |e: String| ApiError::Unavailable(format!("the status stream is unavailable: {e}"));
    let status = st.commands.jetstream().get_stream(events::streams::STATUS_STREAM).await.map_err(|e| unavailable(e.to_string()))?;
    let consumer = status
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: filter, deliver_policy, ..Default::default() })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    metrics::gauge!("ambient_api_sse_streams").increment(1.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECHECK);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = st.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => {
                    match st.authz.all_allowed(&caller.principal, &checks).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = tx.send(Ok(Event::default().event("revoked").data("{\"error\":\"access revoked\"}"))).await;
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "SSE access re-check failed; keeping the stream"),
                    }
                }
                m = messages.next() => {
                    let Some(m) = m else { break };
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => { tracing::warn!(error = %e, "status stream error"); continue; }
                    };
                    let Ok(info) = m.info() else { continue };
                    let seq = info.stream_sequence;
                    let ev = match events::wire::decode_status(m.headers.as_ref(), &m.payload) {
                        Ok(ev) => ev,
                        Err(e) => { tracing::warn!(error = %e, seq, "undecodable status event skipped"); continue; }
                    };
                    let data = json!({"id": ev.id, "type": ev.body.type_str(), "project": ev.project.as_str(),
                        "kind": ev.body.kind().as_str(), "name": ev.name, "time": ev.time.to_rfc3339(), "data": ev.body.data_json()});
                    let sse = Event::default().id(seq.to_string()).event(ev.body.type_str()).data(data.to_string());
                    if tx.send(Ok(sse)).await.is_err() { break; }
                }
            }
        }
        metrics::gauge!("ambient_api_sse_streams").decrement(1.0);
    });
    let body = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut resp = body.into_response();
    resp.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    resp.headers_mut().insert("cache-control", axum::http::HeaderValue::from_static("no-cache"));
    Ok(resp)
}
