//! The api over HTTP: bearer token, JSON in and out, and every failure as a [`Failure`] with
//! the api's own sentence and the exit code a script can rely on.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The api answered with an error.
    #[error("{message}{}{} (HTTP {status})", field.as_ref().map(|f| format!(" [field {f}]")).unwrap_or_default(), reason.as_ref().map(|r| format!(" [{r}]")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The api's `error`.
        message: String,
        /// The api's `reason`, if any.
        reason: Option<String>,
        /// The api's `field`, if any.
        field: Option<String>,
    },
    /// The api could not be reached or did not answer in time.
    #[error("the api at {url} did not answer: {cause}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// Something on this side: a file, the configuration.
    #[error("{0}")]
    Local(String),
    /// A `--wait` that ended badly.
    #[error("{0}")]
    Waited(String),
}

impl Failure {
    /// The documented exit code (`ambient --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Local(_) => 1,
            Failure::Api { status, .. } => match *status {
                404 => 3,
                401 | 403 => 4,
                400 | 409 | 413 | 415 | 422 => 5,
                429 => 6,
                500.. => 7,
                _ => 1,
            },
            Failure::Unreachable { .. } => 7,
            Failure::Waited(_) => 8,
        }
    }
}

/// A client of one api, as one caller.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// A client of the api at `base` with `token`.
    pub fn new(base: &str, token: String, timeout: Duration) -> Result<Self, Failure> {
        // Never follow a redirect: a sign-in page's 302 would turn a DELETE into a GET of HTML.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| Failure::Local(format!("HTTP client: {e}")))?;
        Ok(Api { http, base: base.trim_end_matches('/').to_string(), token })
    }

    /// A client for long-lived streams (no overall timeout).
    pub fn streaming(&self) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .tcp_keepalive(Duration::from_secs(15))
            .build()
            .map_err(|e| Failure::Local(format!("HTTP client: {e}")))?;
        Ok(Api { http, ..self.clone() })
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request of `path` with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    /// Sends `method path` with `body`; the answer's JSON (`null` for 204).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        Self::answer(resp).await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    /// The JSON of a successful answer, or its failure.
    pub async fn answer(resp: reqwest::Response) -> Result<Value, Failure> {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        if status.is_success() {
            return match parsed {
                Ok(v) => Ok(v),
                Err(_) if status == StatusCode::NO_CONTENT || text.trim().is_empty() => Ok(Value::Null),
                Err(_) => Err(Failure::Local(format!(
                    "the server answered {status} with something other than JSON: is --server the api?"
                ))),
            };
        }
        if status.is_redirection() {
            return Err(Failure::Api {
                status: status.as_u16(),
                message: "the server redirected instead of answering (a sign-in page? check --server and the token)"
                    .into(),
                reason: None,
                field: None,
            });
        }
        let body = parsed.unwrap_or(Value::Null);
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(String::from);
        Err(Failure::Api {
            status: status.as_u16(),
            message: s("error").unwrap_or_else(|| {
                if text.trim().is_empty() { status.to_string() } else { text.trim().chars().take(200).collect() }
            }),
            reason: s("reason").or_else(|| s("code")),
            field: s("field"),
        })
    }

    /// A transport error as a failure.
    pub fn unreachable(&self, e: reqwest::Error) -> Failure {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        Failure::Unreachable { url: self.base.clone(), cause }
    }
}

/// A path segment, percent-encoded. Empty, `.` and `..` are refused: URL parsers resolve them
/// (encoded too), so `-p ..` would address another route than the one named.
pub fn seg(s: &str) -> Result<String, Failure> {
    if s.is_empty() || s.trim_matches('.').is_empty() {
        return Err(Failure::Local(format!("{s:?} is not a name")));
    }
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_scripts_rely_on() {
        let api = |status| Failure::Api { status, message: "m".into(), reason: None, field: None };
        let cases = [
            (api(404), 3),
            (api(401), 4),
            (api(403), 4),
            (api(400), 5),
            (api(409), 5),
            (api(422), 5),
            (api(413), 5),
            (api(429), 6),
            (api(500), 7),
            (api(503), 7),
            (Failure::Unreachable { url: "u".into(), cause: "c".into() }, 7),
            (Failure::Local("x".into()), 1),
            (Failure::Waited("x".into()), 8),
        ];
        for (f, code) in cases {
            assert_eq!(f.exit_code(), code, "{f:?}");
        }
    }

    #[test]
    fn one_clear_line_with_the_apis_reason() {
        let f = Failure::Api {
            status: 409,
            message: "session exists".into(),
            reason: Some("AlreadyExists".into()),
            field: None,
        };
        assert_eq!(f.to_string(), "session exists [AlreadyExists] (HTTP 409)");
        let f = Failure::Api { status: 400, message: "bad".into(), reason: None, field: Some("name".into()) };
        assert_eq!(f.to_string(), "bad [field name] (HTTP 400)");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("alice").unwrap(), "alice");
        assert_eq!(seg("system:serviceaccount:p:k").unwrap(), "system%3Aserviceaccount%3Ap%3Ak");
        assert_eq!(seg("a/b c").unwrap(), "a%2Fb%20c");
        assert_eq!(seg("a.b").unwrap(), "a.b");
        for bad in ["", ".", "..", "..."] {
            assert!(seg(bad).is_err(), "{bad:?}");
        }
    }
}
