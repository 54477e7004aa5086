//! Re-authorization at apply time: a SubjectAccessReview for the command's principal on every
//! check its command requires, so a role revoked after the api accepted the command wins.

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};

use events::access::{Requirement, ResourceCheck};
use events::{Command, Principal};

use crate::error::ApplyError;
use crate::labels;

/// Project-creation policy.
#[derive(Debug, Clone)]
pub struct SelfProvision {
    /// Members of this group may create projects.
    pub group: String,
    /// Most projects one user may have requested.
    pub quota: usize,
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
                return Err(ApplyError::forbidden(format!("{} is a ServiceAccount and may not create projects", cmd.principal.user)));
            }
            if !cmd.principal.groups.iter().any(|g| g == &policy.group) {
                return Err(ApplyError::forbidden(format!(
                    "{} may not create projects (not in group {})",
                    cmd.principal.user, policy.group
                )));
            }
            if denied(client, &cmd.principal, &events::access::self_provision_check()).await? {
                return Err(ApplyError::forbidden(format!("{} may not create projects (an authorizer denies it, e.g. its token's scopes)", cmd.principal.user)));
            }
            let managed = Api::<Namespace>::all(client.clone())
                .list_metadata(&ListParams::default().labels(&format!("{}=true", labels::MANAGED)))
                .await?;
            let mine = managed
                .items
                .iter()
                .filter(|ns| {
                    ns.metadata.annotations.as_ref().and_then(|a| a.get(labels::REQUESTER)) == Some(&cmd.principal.user)
                        // The namespace this very command created does not count against it.
                        && ns.metadata.name.as_deref() != Some(cmd.project.as_str())
                })
                .count();
            if mine >= policy.quota {
                return Err(ApplyError::permanent(
                    events::FailureReason::LimitReached,
                    format!("project quota of {} reached", policy.quota),
                ));
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
