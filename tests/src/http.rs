//! A small JSON client for the api, shared by the api's end-to-end tests and the chaos and
//! hostile-input tests.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A client of one api base URL (`http://127.0.0.1:<port>`).
#[derive(Clone)]
pub struct Client {
    /// The base URL.
    pub base: String,
    /// The underlying client (30 s timeout per request).
    pub http: reqwest::Client,
}

/// An answer: status, body (JSON, or the text as a JSON string, or null when empty), headers.
#[derive(Debug)]
pub struct Resp {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
    /// The headers.
    pub headers: HeaderMap,
}

impl Client {
    /// A client of `base` with a 30 s request timeout.
    pub fn new(base: &str) -> Self {
        Self::with_timeout(base, Duration::from_secs(30))
    }

    /// A client of `base` with the given request timeout.
    pub fn with_timeout(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.to_string(), http }
    }

    /// One request; transport errors (refused, reset, timed out) are returned, not panicked.
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Resp, reqwest::Error> {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Resp { status, body, headers })
    }

    /// One request; panics on a transport error (for tests that expect the api to answer).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        match self.try_call(method.clone(), path, token, body, headers).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// `GET`.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None, &[]).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body), &[]).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(token), Some(body), &[]).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(Method::DELETE, path, Some(token), None, &[]).await
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:` (0 when absent or not a number; of a session stream's `<status>:<message>` cursor, the status part).
    pub id: u64,
    /// Its `event:`.
    pub event: String,
    /// Its `data:` as JSON (null when not JSON).
    pub data: Value,
}

/// Reads SSE events from a response until `n` are collected or `timeout` passes; returns them
/// and whether the stream ended.
pub async fn read_events(resp: &mut reqwest::Response, n: usize, timeout: Duration) -> (Vec<SseEvent>, bool) {
    let mut out = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        crate::sse::drain_events(&mut buf, &mut out);
        if out.len() >= n {
            return (out, false);
        }
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) | Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}
