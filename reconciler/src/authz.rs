//! Re-authorization at apply time: a SubjectAccessReview for the command's principal on every
//! check its command requires, so a role revoked after the api accepted the command wins.

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};

use events::access::{Requirement, ResourceCheck};
use events::{Command, Principal};

use crate::error::ApplyError;

/// Project-creation policy.
#[derive(Debug, Clone)]
pub struct SelfProvision {
    /// Members of this group may create projects (the per-user quota is
    /// `apply::project::ProjectQuota`).
    pub group: String,
}

/// Asks the API server whether `principal` may do `check`.
pub async fn allowed(client: &kube::Client, principal: &Principal, check: &ResourceCheck) -> Result<bool, ApplyError> {
    let sar = check.review_for(principal);
    let out = Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &sar).await?;
    Ok(events::access::is_allowed(out.status.as_ref()))
}

/// Whether an authorizer explicitly denies `principal` the check (e.g. its token's scopes).
pub async fn denied(client: &kube::Client, principal: &Principal, check: &ResourceCheck) -> Result<bool, ApplyError> {
    let sar = check.review_for(principal);
    let out = Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &sar).await?;
    Ok(events::access::is_denied(out.status.as_ref()))
}

/// Checks every requirement of `cmd`; the first denied check is a 403.
pub async fn authorize(client: &kube::Client, cmd: &Command, policy: &SelfProvision) -> Result<(), ApplyError> {
    match cmd.requirement() {
        Requirement::SelfProvision => {
            // Access keys and runners are ServiceAccounts scoped to one project.
            if cmd.principal.service_account().is_some() {
                return Err(ApplyError::forbidden(format!(
                    "{} is a ServiceAccount and may not create projects",
                    cmd.principal.user
                )));
            }
            if !cmd.principal.groups.iter().any(|g| g == &policy.group) {
                return Err(ApplyError::forbidden(format!(
                    "{} may not create projects (not in group {})",
                    cmd.principal.user, policy.group
                )));
            }
            if denied(client, &cmd.principal, &events::access::self_provision_check()).await? {
                return Err(ApplyError::forbidden(format!(
                    "{} may not create projects (an authorizer denies it, e.g. its token's scopes)",
                    cmd.principal.user
                )));
            }
            // The per-user quota is decided where the namespace is created, serialized per user
            // (apply/project.rs): a count here could be raced by parallel creates.
            Ok(())
        }
        Requirement::Runner { session, otherwise } => {
            // A runner holds no RBAC rights to review. The api signed the command after it found
            // the pod to be the session's current runner (api/src/runners.rs); here the pod's
            // name must still be one the session's Job could have (a consistency check: names
            // cut at 58 characters can fit two sessions, which the api tells apart).
            if let Some(pod) = events::crd::runner::BoundPod::of(&cmd.principal) {
                if pod.project == cmd.project.as_str() && pod.could_run(&session) {
                    return Ok(());
                }
                return Err(ApplyError::forbidden(format!(
                    "the runner of pod {} may not report on session {session}",
                    pod.name
                )));
            }
            if !allowed(client, &cmd.principal, &otherwise).await? {
                return Err(ApplyError::forbidden(format!("{} may not {otherwise}", cmd.principal.user)));
            }
            Ok(())
        }
        Requirement::All(checks) => {
            for check in &checks {
                if !allowed(client, &cmd.principal, check).await? {
                    return Err(ApplyError::forbidden(format!("{} may not {check}", cmd.principal.user)));
                }
            }
            Ok(())
        }
    }
}
