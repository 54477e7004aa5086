//! A reader of the api's SSE status streams that keeps partial events between reads, for tests
//! that follow one stream through a whole story.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::http::{Client, Resp, SseEvent};

/// Opens `GET path` as an SSE stream; the refusal is returned when the status is not 200.
pub async fn open(c: &Client, path: &str, token: &str, last_event_id: Option<u64>) -> Result<SseStream, Resp> {
    let mut r = c.http.get(format!("{}{}", c.base, path)).bearer_auth(token).timeout(Duration::from_secs(600));
    if let Some(id) = last_event_id {
        r = r.header("last-event-id", id.to_string());
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("GET {path} (SSE): {e}"));
    if resp.status() != StatusCode::OK {
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap_or_default();
        return Err(Resp { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)), headers });
    }
    Ok(SseStream { resp, buf: String::new(), ended: false })
}

/// Takes every complete event (a block ending in a blank line) off the front of `buf`.
pub(crate) fn drain_events(buf: &mut String, out: &mut Vec<SseEvent>) {
    while let Some(i) = buf.find("\n\n") {
        let block: String = buf.drain(..i + 2).collect();
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                // A session stream's id is a `<statusSeq>:<messageSeq>` cursor: keep the status part.
                id = v.trim().split(':').next().and_then(|s| s.parse().ok());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        // Keep-alive comments have no event name.
        if !event.is_empty() {
            out.push(SseEvent { id: id.unwrap_or(0), event, data: serde_json::from_str(&data).unwrap_or_default() });
        }
    }
}

/// An open SSE stream.
pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
    /// The server closed the stream.
    pub ended: bool,
}

impl SseStream {
    /// Reads events until `stop` returns true for one, the stream ends or `timeout` passes;
    /// returns every event read (the matching one last, if any).
    pub async fn read_until(&mut self, timeout: Duration, mut stop: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let mut fresh = Vec::new();
            drain_events(&mut self.buf, &mut fresh);
            for ev in fresh {
                let done = stop(&ev);
                out.push(ev);
                if done {
                    return out;
                }
            }
            if self.ended {
                return out;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
                Err(_) => return out,
            }
        }
    }

    /// Reads until the server closes the stream or `timeout` passes.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Vec<SseEvent> {
        self.read_until(timeout, |_| false).await
    }
}

/// The phase an `ambient.session.phase.v1` event reports, if it is about `session`.
pub fn phase_of(ev: &SseEvent, session: &str) -> Option<String> {
    if ev.event == "ambient.session.phase.v1" && ev.data["name"] == session {
        ev.data["data"]["phase"].as_str().map(String::from)
    } else {
        None
    }
}
