//! Level-triggered controllers (kube-runtime): everything they do is derived from the cluster's
//! current state on every pass, so a restart resumes exactly where the cluster is.

pub mod project;
pub mod session;

use std::time::Duration;

use crate::error::ApplyError;

/// A reconcile pass failed; it is retried after a short delay.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A shared apply helper failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A watch cache was shut down (the reconciler is stopping).
    #[error("a watch cache closed")]
    CacheClosed,
}

/// Delay before a failed reconcile is retried.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(5);
