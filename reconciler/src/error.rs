//! How applying a command can fail: permanently (a failed result, never retried) or transiently
//! (retried in-process with capped backoff while the message is kept).

use events::FailureReason;

pub use events::Cause;

/// The outcome of a failed apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Redelivering cannot help: the command ends with a failed result.
    #[error("{reason:?}: {message}")]
    Permanent {
        /// Machine-readable reason (decides the HTTP-like code).
        reason: FailureReason,
        /// A human sentence (never contains secrets).
        message: String,
    },
    /// The cluster or the bus is unavailable right now; try again.
    #[error("transient: {context}{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Transient {
        /// What was being done.
        context: String,
        /// Why it failed, when another error says so.
        #[source]
        cause: Option<Cause>,
    },
}

impl ApplyError {
    /// A permanent failure.
    pub fn permanent(reason: FailureReason, message: impl Into<String>) -> Self {
        ApplyError::Permanent { reason, message: message.into() }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::permanent(FailureReason::NotFound, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::permanent(FailureReason::Conflict, message)
    }

    /// 422.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::permanent(FailureReason::Invalid, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::permanent(FailureReason::Forbidden, message)
    }

    /// A transient failure of `context` caused by `cause`.
    pub fn transient(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
        ApplyError::Transient { context: context.into(), cause: Some(cause.into()) }
    }

    /// A transient failure with no underlying error (a contended resource, an empty answer).
    pub fn retry(context: impl Into<String>) -> Self {
        ApplyError::Transient { context: context.into(), cause: None }
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Transient { .. })
    }
}

/// True for API errors worth retrying: overload, server errors, optimistic-lock conflicts.
pub fn kube_is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500 || (s.code == 409 && s.reason == "Conflict"),
        // Connection refused, TLS, timeouts, body read errors: the API server is unreachable.
        _ => true,
    }
}

/// Whether a create failed because the object exists. Not every 409 says so: quota admission
/// answers 409 `Conflict` when it loses a race to update the namespace's quota usage (a busy
/// namespace), and that create is to be tried again, not taken as "already there".
pub fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

impl From<kube::Error> for ApplyError {
    fn from(e: kube::Error) -> Self {
        if kube_is_transient(&e) {
            return ApplyError::transient("Kubernetes API", e);
        }
        match &e {
            kube::Error::Api(s) => {
                let reason = match s.code {
                    400 => FailureReason::BadRequest,
                    403 => FailureReason::Forbidden,
                    404 => FailureReason::NotFound,
                    409 => FailureReason::Conflict,
                    422 => FailureReason::Invalid,
                    _ => FailureReason::BadRequest,
                };
                ApplyError::permanent(reason, s.message.clone())
            }
            _ => ApplyError::transient("Kubernetes API", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status { code, reason: reason.into(), message: "m".into(), ..Default::default() }.boxed())
    }

    #[test]
    fn classification() {
        assert!(ApplyError::from(api(503, "ServiceUnavailable")).is_transient());
        assert!(ApplyError::from(api(429, "TooManyRequests")).is_transient());
        assert!(ApplyError::from(api(409, "Conflict")).is_transient());
        assert!(matches!(
            ApplyError::from(api(409, "AlreadyExists")),
            ApplyError::Permanent { reason: FailureReason::Conflict, .. }
        ));
        assert!(matches!(
            ApplyError::from(api(404, "NotFound")),
            ApplyError::Permanent { reason: FailureReason::NotFound, .. }
        ));
        assert!(matches!(
            ApplyError::from(api(422, "Invalid")),
            ApplyError::Permanent { reason: FailureReason::Invalid, .. }
        ));
    }

    #[test]
    fn a_transient_failure_keeps_its_cause() {
        let e = ApplyError::from(api(503, "ServiceUnavailable"));
        let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<kube::Error>());
        assert!(matches!(cause, Some(kube::Error::Api(s)) if s.code == 503), "{cause:?}");
        assert!(e.to_string().starts_with("transient: Kubernetes API: "), "{e}");
        assert!(std::error::Error::source(&ApplyError::retry("contended")).is_none());
    }

    #[test]
    fn only_already_exists_means_the_object_is_there() {
        assert!(already_exists(&api(409, "AlreadyExists")));
        // Quota admission losing a race on the quota's usage: try the create again.
        assert!(!already_exists(&api(409, "Conflict")));
        assert!(!already_exists(&api(404, "NotFound")));
    }
}
