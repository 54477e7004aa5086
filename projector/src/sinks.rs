//! HTTP sinks: status events pushed to outside subscribers (observability collectors, Jira
//! bridges) as CloudEvents over HTTP in binary mode.
//!
//! Each sink has its own durable JetStream consumer on the status stream
//! (`projector-sink-<name>`, explicit ack, one message in flight), so a sink that is down
//! holds back only itself and resumes where it stopped, across projector restarts. A message
//! is acknowledged only after the sink answered 2xx; until then it is retried with capped
//! exponential backoff, forever (never dropped). Delivery is at-least-once: a sink
//! de-duplicates by `ce-id`.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use cloudevents::AttributesReader;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// A sink's configuration (one entry of `--sinks-file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkConfig {
    /// DNS-1123 label; names the durable consumer `projector-sink-<name>`.
    pub name: String,
    /// Where to POST events.
    pub url: String,
    /// Subject filters on `ambient.status.>` (empty: every status event).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Where to read the value of the auth header from.
    #[serde(default)]
    pub auth_header_secret: Option<SecretRef>,
    /// The header the secret value goes in.
    #[serde(default = "default_auth_header")]
    pub auth_header_name: String,
}

fn default_auth_header() -> String {
    "authorization".into()
}

/// A key of a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Key in its data.
    pub key: String,
}

/// The sinks file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    /// Unreadable file.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a list of sinks.
    #[error("invalid sinks file: {0}")]
    Parse(String),
    /// A sink is not valid.
    #[error("sink {name:?}: {problem}")]
    Invalid {
        /// The sink.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// Parses a sinks document: a JSON or YAML list of [`SinkConfig`].
pub fn parse_sinks(text: &str) -> Result<Vec<SinkConfig>, SinkConfigError> {
    let trimmed = text.trim_start();
    let sinks: Vec<SinkConfig> = if trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| SinkConfigError::Parse(e.to_string()))?
    } else if trimmed.is_empty() {
        Vec::new()
    } else {
        serde_saphyr::from_str(text).map_err(|e| SinkConfigError::Parse(e.to_string()))?
    };
    let mut names = std::collections::BTreeSet::new();
    for s in &sinks {
        let invalid = |problem: &str| SinkConfigError::Invalid { name: s.name.clone(), problem: problem.into() };
        events::names::check_dns1123_label("name", &s.name, 40).map_err(|e| invalid(&e.to_string()))?;
        if !names.insert(s.name.clone()) {
            return Err(invalid("duplicate name"));
        }
        let url = reqwest::Url::parse(&s.url).map_err(|e| invalid(&format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("url must be http or https"));
        }
        for f in &s.subjects {
            if !(f == "ambient.status.>" || f.starts_with("ambient.status.")) || f.contains(' ') {
                return Err(invalid("subjects must be filters within ambient.status.>"));
            }
        }
        http::HeaderName::from_bytes(s.auth_header_name.as_bytes())
            .map_err(|_| invalid("authHeaderName is not a header name"))?;
    }
    Ok(sinks)
}

/// Reads `--sinks-file`.
pub fn load_sinks(path: &Path) -> Result<Vec<SinkConfig>, SinkConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| SinkConfigError::Read { path: path.display().to_string(), source })?;
    parse_sinks(&text)
}

/// The durable consumer of a sink.
pub fn consumer_config(sink: &SinkConfig) -> consumer::pull::Config {
    let filters =
        if sink.subjects.is_empty() { vec![format!("{}.>", events::subjects::STATUS)] } else { sink.subjects.clone() };
    let (filter_subject, filter_subjects) =
        if filters.len() == 1 { (filters[0].clone(), Vec::new()) } else { (String::new(), filters) };
    consumer::pull::Config {
        durable_name: Some(format!("projector-sink-{}", sink.name)),
        description: Some(format!("projector HTTP sink {}", sink.name)),
        filter_subject,
        filter_subjects,
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        // One in flight: strict order. The projector keeps the message in progress while it
        // retries, so ack_wait only matters when the projector itself dies.
        max_ack_pending: 1,
        ack_wait: ACK_WAIT,
        // Unlimited: a sink's events are never given up.
        max_deliver: -1,
        ..Default::default()
    }
}

/// How long a delivery may go without an ack or progress before it is redelivered.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How often a retried delivery tells JetStream it is still in progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Timeout of one HTTP delivery (below ACK_WAIT).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Capped exponential backoff: 0.5 s, 1 s, 2 s, … up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Creates the sink's durable consumer and delivers to it until `cancel`.
pub async fn run_sink(sink: SinkConfig, js: jetstream::Context, kube: kube::Client, cancel: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(HTTP_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(sink = %sink.name, error = %e, "cannot build the HTTP client");
            return;
        }
    };
    let mut auth = AuthHeader::new(&sink, kube);
    let mut attempt = 0u32;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match consume(&sink, &js, &http, &mut auth, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "sink consumer failed; re-creating");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

async fn consume(
    sink: &SinkConfig,
    js: &jetstream::Context,
    http: &reqwest::Client,
    auth: &mut AuthHeader,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = js.get_stream(events::streams::STATUS_STREAM).await?;
    let consumer = stream.create_consumer(consumer_config(sink)).await?;
    let mut messages =
        consumer.stream().heartbeat(Duration::from_secs(5)).expires(Duration::from_secs(30)).messages().await?;
    tracing::info!(sink = %sink.name, "sink consumer ready");
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = match next {
            None => anyhow::bail!("message stream ended"),
            Some(Err(e)) => {
                use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                match e.kind() {
                    K::ConsumerDeleted | K::PushBasedConsumer | K::RequestLimitExceeded => return Err(e.into()),
                    _ => {
                        tracing::debug!(sink = %sink.name, error = %e, "transient consumer error");
                        continue;
                    }
                }
            }
            Some(Ok(m)) => m,
        };
        deliver(sink, http, auth, &msg, cancel).await;
    }
}

async fn deliver(
    sink: &SinkConfig,
    http: &reqwest::Client,
    auth: &mut AuthHeader,
    msg: &jetstream::Message,
    cancel: &CancellationToken,
) {
    let name = sink.name.clone();
    if let Ok(info) = msg.info() {
        metrics::gauge!("projector_sink_pending", "sink" => name.clone()).set(info.pending as f64);
        let lag = (chrono::Utc::now() - info.published).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::gauge!("projector_sink_lag_seconds", "sink" => name.clone()).set(lag);
    }
    let event = match events::binding::from_nats(msg.headers.as_ref(), &msg.payload) {
        Ok(ev) => ev,
        Err(e) => {
            // Not a CloudEvent: no sink can use it, and it must not block the ones after it.
            tracing::error!(sink = %name, subject = %msg.subject, error = %e, "undeliverable status message; terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let headers = events::binding::to_http_headers(&event);
    let body = events::binding::data_bytes(&event);
    let id = event.id().to_string();
    let ty = event.ty().to_string();
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let mut req = http.post(&sink.url).body(body.clone());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(value) = auth.value().await {
            req = req.header(sink.auth_header_name.as_str(), value);
        }
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(e.without_url().to_string()),
        };
        match outcome {
            Ok(()) => {
                metrics::counter!("projector_sink_deliveries_total", "sink" => name.clone()).increment(1);
                metrics::histogram!("projector_sink_delivery_seconds", "sink" => name.clone())
                    .record(started.elapsed().as_secs_f64());
                // The sink has it; if this ack is lost it is delivered again (at-least-once).
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(sink = %name, event_id = %id, error = %e, "ack failed; the event may be delivered again");
                }
                tracing::info!(sink = %name, event_id = %id, event_type = %ty, attempts = attempt + 1, "delivered to sink");
                return;
            }
            Err(why) => {
                metrics::counter!("projector_sink_failures_total", "sink" => name.clone()).increment(1);
                let delay = backoff(attempt);
                tracing::warn!(sink = %name, event_id = %id, event_type = %ty, error = %why, attempt = attempt + 1,
                    retry_in_ms = delay.as_millis() as u64, "sink delivery failed; retrying");
                if why.contains("401") || why.contains("403") {
                    auth.invalidate();
                }
                // Keep the message ours while we wait (no redelivery behind our back); if we
                // die, it is redelivered after ack_wait.
                let until = Instant::now() + delay;
                loop {
                    let _ = msg.ack_with(AckKind::Progress).await;
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(left.min(PROGRESS_EVERY)) => {}
                    }
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// The sink's auth header value, read from its Secret and cached briefly. Never logged.
struct AuthHeader {
    secret: Option<SecretRef>,
    kube: kube::Client,
    cached: Option<(http::HeaderValue, Instant)>,
}

const AUTH_TTL: Duration = Duration::from_secs(60);

impl AuthHeader {
    fn new(sink: &SinkConfig, kube: kube::Client) -> Self {
        AuthHeader { secret: sink.auth_header_secret.clone(), kube, cached: None }
    }

    fn invalidate(&mut self) {
        self.cached = None;
    }

    async fn value(&mut self) -> Option<http::HeaderValue> {
        let r = self.secret.as_ref()?;
        if let Some((v, at)) = &self.cached
            && at.elapsed() < AUTH_TTL
        {
            return Some(v.clone());
        }
        let api = Api::<Secret>::namespaced(self.kube.clone(), &r.namespace);
        match api.get(&r.name).await {
            Ok(s) => {
                let bytes = s.data.as_ref().and_then(|d| d.get(&r.key)).map(|b| b.0.clone());
                let Some(bytes) = bytes else {
                    tracing::warn!(secret = %r.name, namespace = %r.namespace, key = %r.key, "sink auth secret has no such key");
                    return None;
                };
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                match http::HeaderValue::from_str(&text) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        self.cached = Some((v.clone(), Instant::now()));
                        Some(v)
                    }
                    Err(_) => {
                        tracing::warn!(secret = %r.name, namespace = %r.namespace, "sink auth secret value is not a valid header value");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(secret = %r.name, namespace = %r.namespace, error = %e, "cannot read sink auth secret");
                self.cached.as_ref().map(|(v, _)| v.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json() {
        let yaml = "- name: jira\n  url: http://jira-bridge:8080/events\n  subjects: [\"ambient.status.*.session.>\"]\n  authHeaderSecret: {namespace: ambient-system, name: ambient-projector-sink-auth, key: jira}\n- name: otel\n  url: https://collector:4318/ce\n";
        let s = parse_sinks(yaml).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].auth_header_secret.as_ref().unwrap().key, "jira");
        assert_eq!(s[0].auth_header_name, "authorization");
        let json =
            r#"[{"name":"a","url":"http://127.0.0.1:1/x","subjects":["ambient.status.p.>","ambient.status.q.>"]}]"#;
        let s = parse_sinks(json).unwrap();
        let c = consumer_config(&s[0]);
        assert_eq!(c.filter_subjects.len(), 2);
        assert_eq!(c.max_ack_pending, 1);
        assert_eq!(c.durable_name.as_deref(), Some("projector-sink-a"));
        assert_eq!(
            consumer_config(&parse_sinks("- {name: b, url: 'http://x'}").unwrap()[0]).filter_subject,
            "ambient.status.>"
        );
    }

    #[test]
    fn refuses_bad_sinks() {
        for bad in [
            r#"[{"name":"Bad_Name","url":"http://x"}]"#,
            r#"[{"name":"a","url":"ftp://x"}]"#,
            r#"[{"name":"a","url":"http://x","subjects":["ambient.cmd.>"]}]"#,
            r#"[{"name":"a","url":"http://x"},{"name":"a","url":"http://y"}]"#,
            r#"[{"name":"a","url":"http://x","extra":1}]"#,
        ] {
            assert!(parse_sinks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
