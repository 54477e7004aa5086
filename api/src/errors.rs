//! Every error the api answers with, as `{"error": "<sentence>", ...details}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The one answer for a project the caller may not see and for one that does not exist, so that
/// no route reveals another tenant's project names.
pub const PROJECT_NOT_FOUND: &str = "project not found";

pub use events::Cause;

/// `": <cause>"`, or nothing.
fn colon(cause: &Option<Cause>) -> String {
    cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
}

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no token or the token did not authenticate.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403 with a sentence.
    #[error("{0}")]
    Forbidden(String),
    /// 404 with a sentence.
    #[error("{0}")]
    NotFound(String),
    /// 400: malformed request, optionally naming a field.
    #[error("{message}")]
    BadRequest { message: String, field: Option<String> },
    /// 422: well-formed but invalid value of a field.
    #[error("{message}")]
    Invalid { message: String, field: String },
    /// 413.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the body did not arrive in time.
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    /// 413 with a sentence (e.g. a session message over its size limit).
    #[error("{0}")]
    TooLarge(String),
    /// 409 that no command produced, with a machine-readable reason.
    #[error("{message}")]
    Conflict { reason: &'static str, message: String },
    /// 415.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 429 with the seconds to wait.
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// 429 for one project whose backlog of pending commands is at its limit: other projects
    /// are unaffected. Carries `Retry-After` and the reason `ProjectBacklogFull`.
    #[error("{message}")]
    Backlog { message: String, retry_after_secs: u64 },
    /// 503: a dependency (NATS, the API server) is unavailable.
    #[error("{message}{}", colon(.cause))]
    Unavailable {
        /// What could not be done.
        message: String,
        /// Why.
        #[source]
        cause: Option<Cause>,
    },
    /// 503 for a command whose publish was not acknowledged: the bus may or may not have it.
    /// The body carries `commandId` (and `Location`), so the caller can look its outcome up
    /// instead of guessing; a retry with the same `Idempotency-Key` is also safe.
    #[error("{message}")]
    Undetermined { message: String, command_id: uuid::Uuid },
    /// 503 for an access-key creation accepted but not applied within the key wait: its
    /// one-time token waits (parked) for the same request again or `GET /api/commands/{id}`.
    /// Carries `commandId`, `Location`, `Retry-After` and the reason `KeyCreationPending`.
    #[error("{message}")]
    KeyPending { message: String, command_id: uuid::Uuid },
    /// A command's failed result, with its HTTP-like code and reason.
    #[error("{message}")]
    CommandFailed { code: u16, reason: String, message: String },
    /// 404 for a feature the existing web UI offers and this platform does not: the sentence
    /// (`"<Feature> is not available on this platform"`, what the UI toasts) names the feature,
    /// and the body carries `code: "not_available"` (the UI's `ApiClientError.code`), so it is
    /// told apart from a missing object.
    #[error("{0}")]
    NotAvailable(&'static str),
    /// 500: a bug or an unexpected dependency answer (never client input).
    #[error("internal error: {0}")]
    Internal(#[source] Cause),
}

impl ApiError {
    /// 503 with a sentence.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable { message: message.into(), cause: None }
    }

    /// 503: `message`, because of `cause`.
    pub fn unavailable_from(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        ApiError::Unavailable { message: message.into(), cause: Some(cause.into()) }
    }

    /// 500 (a bug, never client input).
    pub fn internal(cause: impl Into<Cause>) -> Self {
        ApiError::Internal(cause.into())
    }

    /// 503 for a call of the api's own to the API server that failed. The one mapping of kube
    /// errors: it keeps the reason and code only, never request detail (a TokenReview's body
    /// holds the caller's token).
    pub fn kube(what: &str, e: &kube::Error) -> Self {
        let cause = match e {
            kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
            _ => "API server unreachable".into(),
        };
        ApiError::unavailable_from(format!("{what} failed"), cause)
    }

    /// 404 for an invisible or missing project.
    pub fn project_not_found() -> Self {
        ApiError::NotFound(PROJECT_NOT_FOUND.into())
    }

    /// 400 naming a field.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest { message: message.into(), field: Some(field.into()) }
    }

    /// 422 naming a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), field: field.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NotAvailable(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) | ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } | ApiError::Backlog { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::Undetermined { .. } | ApiError::KeyPending { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::CommandFailed { code, .. } => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::authz::AuthzError> for ApiError {
    fn from(e: crate::authz::AuthzError) -> Self {
        ApiError::unavailable_from("authorization check failed", e)
    }
}

impl From<events::ValidationError> for ApiError {
    fn from(e: events::ValidationError) -> Self {
        ApiError::bad_field(e.field.clone(), format!("invalid {}: {}", e.field, e.rule))
    }
}

impl From<events::limits::LimitError> for ApiError {
    fn from(e: events::limits::LimitError) -> Self {
        if e.whole { ApiError::TooLarge(e.message) } else { ApiError::Invalid { message: e.message, field: e.field } }
    }
}

/// A JSON error response with the given status and message (used by fallbacks and layers).
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
        }
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.to_string()));
        match &self {
            ApiError::BadRequest { field: Some(f), .. } | ApiError::Invalid { field: f, .. } => {
                body.insert("field".into(), Value::String(f.clone()));
            }
            ApiError::CommandFailed { reason, .. } => {
                body.insert("reason".into(), Value::String(reason.clone()));
            }
            ApiError::Conflict { reason, .. } => {
                body.insert("reason".into(), Value::String((*reason).into()));
            }
            ApiError::Undetermined { command_id, .. } => {
                body.insert("commandId".into(), Value::String(command_id.to_string()));
            }
            ApiError::KeyPending { command_id, .. } => {
                body.insert("commandId".into(), Value::String(command_id.to_string()));
                body.insert("reason".into(), Value::String("KeyCreationPending".into()));
            }
            ApiError::Backlog { .. } => {
                body.insert("reason".into(), Value::String("ProjectBacklogFull".into()));
            }
            ApiError::NotAvailable(_) => {
                body.insert("code".into(), Value::String("not_available".into()));
            }
            _ => {}
        }
        let mut resp = (status, axum::Json(Value::Object(body))).into_response();
        if let ApiError::Undetermined { command_id, .. } | ApiError::KeyPending { command_id, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("/api/commands/{command_id}"))
        {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        if let ApiError::TooManyRequests { retry_after_secs } | ApiError::Backlog { retry_after_secs, .. } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        if let ApiError::KeyPending { .. } = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5u64));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_dependency_failure_keeps_its_cause_and_its_sentence() {
        let e = ApiError::unavailable_from("the command bus is unavailable", std::io::Error::other("connection reset"));
        assert_eq!(e.to_string(), "the command bus is unavailable: connection reset");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("connection reset"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bare = ApiError::unavailable("the command stream is full; retry later");
        assert_eq!(bare.to_string(), "the command stream is full; retry later");
        assert!(bare.source().is_none());
        let bug = ApiError::internal(serde_json::from_str::<u8>("x").unwrap_err());
        assert!(bug.to_string().starts_with("internal error: "));
        assert!(bug.source().is_some());
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
