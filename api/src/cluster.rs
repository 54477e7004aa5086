//! What the api knows of the cluster it runs on, discovered once at start-up (see
//! `routes::ui::discover_cluster`).

use std::sync::OnceLock;

/// Facts of the cluster, discovered once (not per request: `cluster-info` is public).
#[derive(Default)]
pub struct UiState {
    /// Whether the cluster serves `project.openshift.io`; unset until discovery succeeded.
    openshift: OnceLock<bool>,
}

impl UiState {
    /// Whether the cluster is OpenShift; `false` while unknown (the UI's own default on error).
    pub fn is_openshift(&self) -> bool {
        self.openshift.get().copied().unwrap_or(false)
    }

    /// Records what discovery found (once: a cluster does not become OpenShift while the api runs).
    pub fn discovered(&self, openshift: bool) {
        let _ = self.openshift.set(openshift);
    }
}
