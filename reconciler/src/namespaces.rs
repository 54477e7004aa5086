//! The managed namespaces (projects), as the namespace controller's watch already holds them.
//!
//! Every session create and every session reconcile must know that its namespace is a managed
//! project. Asking the API server each time was one GET per command and per reconcile pass; the
//! namespace controller's store answers the common case without a second watch. The store only
//! ever says "yes": a namespace it does not hold (not listed yet, just created) is still looked
//! up, so its staleness can only be a namespace that lost its label or was deleted milliseconds
//! ago, and the write that follows fails then anyway.

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};

use events::ProjectName;

use events::views::is_project;

use crate::error::ApplyError;

/// Managed namespaces by name, with a lookup for those the store does not hold.
#[derive(Clone)]
pub struct Projects {
    store: Store<Namespace>,
    client: kube::Client,
}

impl Projects {
    /// Over the namespace controller's store (see `controllers::project::start`).
    pub fn new(store: Store<Namespace>, client: kube::Client) -> Self {
        Self { store, client }
    }

    fn cached(&self, name: &str) -> bool {
        self.store
            .get(&ObjectRef::new(name))
            .is_some_and(|ns| is_project(&ns) && ns.metadata.deletion_timestamp.is_none())
    }

    /// Fails with "project not found" unless `project` is a managed namespace.
    pub async fn require(&self, project: &ProjectName) -> Result<(), ApplyError> {
        if !self.cached(project.as_str()) {
            managed_namespace(&self.client, project).await?;
        }
        Ok(())
    }

    /// Whether the namespace `name` is a managed project.
    pub async fn is_managed(&self, name: &str) -> Result<bool, kube::Error> {
        if self.cached(name) {
            return Ok(true);
        }
        let ns = kube::Api::<Namespace>::all(self.client.clone()).get_opt(name).await?;
        Ok(ns.is_some_and(|n| is_project(&n)))
    }
}

/// The project's namespace, if it exists and is managed (an unmanaged namespace is not a project
/// and is reported as missing, never touched).
pub async fn managed_namespace(client: &kube::Client, project: &ProjectName) -> Result<Namespace, ApplyError> {
    let ns = kube::Api::<Namespace>::all(client.clone()).get_opt(project.as_str()).await?;
    match ns {
        Some(ns) if events::views::is_project(&ns) => Ok(ns),
        _ => Err(ApplyError::not_found(format!("project {project} not found"))),
    }
}
