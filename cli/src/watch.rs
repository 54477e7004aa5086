//! `ambient sessions watch`: the api's status stream (server-sent events) as live lines, resumed
//! with `Last-Event-ID` after a dropped connection or a restarted api.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

use crate::cli::Format;
use crate::client::{Api, Failure, seg};

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sse {
    /// `id:` (the stream position to resume after).
    pub id: Option<String>,
    /// `event:`.
    pub event: String,
    /// `data:` lines, joined.
    pub data: String,
}

/// Splits a byte stream into events: lines, fields, a blank line ends an event. Bytes are
/// decoded a whole line at a time, so a character split between chunks stays whole.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    cur: Sse,
}

impl Parser {
    /// Feeds `chunk`; the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Sse> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.cur.data.is_empty() || !self.cur.event.is_empty() {
                    out.push(std::mem::take(&mut self.cur));
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) =
                line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
            match field {
                "id" => self.cur.id = Some(value.to_string()),
                "event" => self.cur.event = value.to_string(),
                "data" => {
                    if !self.cur.data.is_empty() {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }
}

/// `s` without control characters (an agent's text must not drive the terminal: no escape
/// sequences, no clipboard writes).
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\t' { ' ' } else { c }).collect()
}

/// A line for people: when, what, which object, and its phase when it has one.
pub fn line(ev: &Sse) -> String {
    printable(&raw_line(ev))
}

fn raw_line(ev: &Sse) -> String {
    let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    if ev.event == "message" {
        let content = v
            .pointer("/payload/content")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| v.get("payload").map(Value::to_string).unwrap_or_default());
        return format!("{:<25} {:<22} {content}", s("/timestamp"), s("/type"));
    }
    let phase = s("/data/phase");
    let extra = if phase.is_empty() { String::new() } else { format!(" {phase}") };
    format!("{:<25} {:<22} {}/{}{extra}", s("/time"), ev.event, s("/kind"), s("/name"))
}

/// How long a stream may stay silent before it is taken for dead.
const IDLE: Duration = Duration::from_secs(45);

/// Follows the status of `project` (or of one session) until interrupted.
pub async fn watch(api: &Api, out: Format, project: &str, session: Option<&str>) -> Result<(), Failure> {
    let path = match session {
        Some(s) => format!("/api/projects/{}/agentic-sessions/{}/events", seg(project)?, seg(s)?),
        None => format!("/api/projects/{}/events", seg(project)?),
    };
    let api = api.streaming()?;
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut req = api.request(Method::GET, &path).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_server_error() || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                eprintln!("watch: the api answered {}; retrying in {} s", r.status(), backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            Ok(r) => return Api::answer(r).await.map(|_| ()),
            Err(e) => {
                eprintln!("watch: {}; reconnecting in {} s", api.unreachable(e), backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let mut parser = Parser::default();
        let mut body = resp.bytes_stream();
        // The api sends a keep-alive every 15 s: silence for longer is a connection that died
        // half-open (a node gone), which no read would ever notice.
        while let Ok(Some(chunk)) = tokio::time::timeout(IDLE, body.next()).await {
            let Ok(chunk) = chunk else { break };
            for ev in parser.feed(&chunk) {
                match ev.event.as_str() {
                    "revoked" => {
                        return Err(Failure::Api {
                            status: 403,
                            message: "your access to this project was revoked".into(),
                            reason: None,
                            field: None,
                        });
                    }
                    "unavailable" => break,
                    _ => {}
                }
                if ev.id.is_some() {
                    last_id.clone_from(&ev.id);
                }
                match out {
                    Format::Json => println!("{}", ev.data),
                    Format::Yaml => {
                        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                        crate::output::structured(out, &v)?;
                        println!("---");
                    }
                    _ => println!("{}", line(&ev)),
                }
            }
        }
        eprintln!(
            "watch: the stream ended; resuming{}",
            last_id.as_ref().map(|i| format!(" after {i}")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = Parser::default();
        assert!(p.feed(b": keep-alive\n\nid: 7\nevent: session.").is_empty());
        let evs = p.feed(b"phase\ndata: {\"a\":1}\n\nid: 8\r\nevent: x\r\ndata: l1\r\ndata: l2\r\n\r\n");
        assert_eq!(
            evs,
            [
                Sse { id: Some("7".into()), event: "session.phase".into(), data: "{\"a\":1}".into() },
                Sse { id: Some("8".into()), event: "x".into(), data: "l1\nl2".into() },
            ]
        );
    }

    #[test]
    fn a_character_split_between_chunks_stays_whole() {
        let mut p = Parser::default();
        let bytes = "data: grüße\n\n".as_bytes();
        let cut = bytes.iter().position(|b| *b == 0xc3).unwrap() + 1;
        assert!(p.feed(&bytes[..cut]).is_empty());
        assert_eq!(p.feed(&bytes[cut..])[0].data, "grüße");
    }

    #[test]
    fn an_agents_text_cannot_drive_the_terminal() {
        assert_eq!(printable("hi\x1b]52;c;ZXZpbA==\x07 there\r\n"), "hi ]52;c;ZXZpbA==  there  ");
    }

    #[test]
    fn lines_name_the_object_and_its_phase() {
        let ev = Sse {
            id: Some("3".into()),
            event: "session.phase".into(),
            data: r#"{"time":"2026-12-07T10:00:00Z","kind":"session","name":"hello","data":{"phase":"Running"}}"#
                .into(),
        };
        assert_eq!(line(&ev), "2026-12-07T10:00:00Z      session.phase          session/hello Running");
    }
}
