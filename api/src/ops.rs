//! Operations: readiness (served on the operations port by `events::service::Runtime`, beside
//! its health and metrics), the OpenAPI document, and the layers every response goes through
//! (JSON errors, request ids, metrics, panics).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::bearer_token;
use crate::errors::{ApiError, json_error};
use crate::limits::{client_address, client_key};
use crate::state::AppState;

static OPENAPI: OnceLock<String> = OnceLock::new();

/// Stores the rendered OpenAPI document.
pub fn set_openapi(doc: &serde_json::Value) {
    let _ = OPENAPI.set(serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".into()));
}

/// Readiness: NATS connected, the API server reachable and the watch caches filled.
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let nats = st.commands.connected();
    let apiserver =
        tokio::time::timeout(Duration::from_secs(2), st.kube.apiserver_version()).await.is_ok_and(|r| r.is_ok());
    let caches = st.reads.ready();
    let ok = nats && apiserver && caches;
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"nats": nats, "apiserver": apiserver, "caches": caches});
    if !ok {
        body["error"] = json!("not ready");
    }
    (code, axum::Json(body)).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    let doc = OPENAPI.get().cloned().unwrap_or_else(|| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// Unknown route.
pub async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such route")
}

/// Wrong method.
pub async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
}

/// A panic becomes a 500 JSON answer (and is logged).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<String> {
    tracing::error!("handler panicked");
    let mut r = Response::new(json!({"error": "internal error"}).to_string());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The `method` label of a request: one of a fixed set, `other` for any method a client makes
/// up (a label per made-up method would grow the metrics without bound).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `route` label of a request: the template of the route it matched (from the route
/// table, never from the request), `unmatched` when none did.
pub fn route_label(matched: Option<&MatchedPath>) -> String {
    matched.map_or("unmatched", |m| m.as_str()).to_string()
}

/// Counts and times requests, and turns every non-JSON error (extractor rejections, axum's own
/// answers) into a JSON error body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = route_label(req.extensions().get::<MatchedPath>());
    let mut resp = next.run(req).await;
    let status = resp.status();
    // A body refused for its size or its pace was not read to its end, so the connection cannot
    // carry another request: say so, or a client reusing it fails on its next request.
    if matches!(status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    metrics::histogram!("ambient_api_request_seconds", "method" => method, "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("ambient_api_requests_total", "method" => method, "route" => route, "status" => status.as_u16().to_string())
        .increment(1);
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (mut parts, body) = resp.into_parts();
        let detail = axum::body::to_bytes(body, 4096)
            .await
            .ok()
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .unwrap_or_default();
        let msg =
            if detail.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { detail };
        let body = json!({"error": msg}).to_string();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(body));
    }
    resp
}

/// The middleware of the public listener: one cell of the client's bucket per request that
/// could cost a TokenReview (no token, an unknown or a rejected one), before anything else runs.
/// A request whose token has a live review in the cache costs the API server nothing and is
/// limited per principal instead: behind a proxy, where every client shares the proxy's address,
/// an unauthenticated flood then cannot lock out the users already signed in.
pub async fn per_address(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if bearer_token(&parts).is_some_and(|t| st.auth.known_valid(&t)) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = client_address(peer, &parts.headers, &st.limits.trusted_proxies);
    match st.limits.per_address.check(&client_key(client)) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(retry_after_secs) => {
            metrics::counter!("ambient_api_pre_auth_limited_total").increment(1);
            ApiError::TooManyRequests { retry_after_secs }.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_fixed_set() {
        for (m, want) in [
            ("GET", "GET"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("DELETE", "DELETE"),
            ("PATCH", "PATCH"),
            ("HEAD", "HEAD"),
            ("OPTIONS", "OPTIONS"),
            ("CONNECT", "CONNECT"),
            ("TRACE", "TRACE"),
            ("get", "other"),
            ("PROPFIND", "other"),
            ("X-MADE-UP", "other"),
        ] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), want, "{m}");
        }
        let huge = Method::from_bytes("A".repeat(30 * 1024).as_bytes()).unwrap();
        assert_eq!(method_label(&huge), "other");
    }

    #[tokio::test]
    async fn route_labels_are_templates_or_unmatched() {
        use tower::ServiceExt as _;
        // What the middleware sees: MatchedPath of the route the router picked.
        let label = |req: Request| async move { route_label(req.extensions().get::<MatchedPath>()) };
        let router = axum::Router::new().route("/api/projects/{project}", axum::routing::get(label)).fallback(label);
        for (path, want) in
            [("/api/projects/secret-name-1234", "/api/projects/{project}"), ("/caller-chosen-9876", "unmatched")]
        {
            let resp =
                router.clone().oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
            assert_eq!(body, want.as_bytes(), "{path}");
        }
        assert_eq!(route_label(None), "unmatched");
    }
}
